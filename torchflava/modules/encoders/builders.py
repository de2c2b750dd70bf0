"""The generic encoder builder: a stack of pre-norm transformer layers from the modules of ``layers``."""

from typing import Optional

from torch import nn

from torchflava.modules.layers.activation import ACTIVATIONS
from torchflava.modules.layers.activation import activation as make_activation
from torchflava.modules.layers.attention import MultiHeadSelfAttention
from torchflava.modules.layers.cross_attention import MultiHeadCrossAttention
from torchflava.modules.layers.mlp import MLP
from torchflava.modules.layers.transformer import TransformerEncoder, TransformerEncoderLayer
from torchflava.utils.checks import check_architecture, check_fits_in_memory

# The deepest stack transformer_encoder builds (the deepest published ones hold a few hundred layers).
MAX_LAYERS = 10_000


def transformer_encoder(
    *,
    embed_dim: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    norm_eps: float = 1e-5,
    activation: str = "gelu",
    is_causal: bool = False,
    bias: bool = True,
    mlp_dropout: Optional[float] = None,
    cross_attention_dim: Optional[int] = None,
) -> TransformerEncoder:
    """A stack of pre-norm layers: fused-QKV SDPA attention, a two-layer MLP, LayerNorms.

    ``flava_*`` builders use it with ``norm_eps=1e-12`` and exact GELU; CLIP's towers with
    QuickGELU or GELU, and ``is_causal=True`` for text. Activation checkpointing is set on the built
    model with :func:`torchflava.modules.layers.set_activation_checkpointing`.

    Args:
        embed_dim (int): width D.
        num_layers (int): number of layers, >= 1.
        num_heads (int): attention heads per layer.
        mlp_dim (int): hidden width of the MLP.
        dropout (float): dropout in the MLP and on the residual branches.
        attention_dropout (float): dropout on attention probabilities, in [0, 1).
        norm_eps (float): LayerNorm epsilon.
        activation (str): the MLP's activation: ``"gelu"``, ``"gelu_tanh"`` or ``"quick_gelu"``.
        is_causal (bool): causal self-attention (each position sees itself and earlier ones).
        bias (bool): biases in every linear layer and LayerNorm (False: a bias-free transformer).
        mlp_dropout (Optional[float]): dropout after the MLP's activation; None: ``dropout``
            (torchmultimodal's placement; transformers' BERT-style layers have none there: 0).
        cross_attention_dim (Optional[int]): None: self-attention only. A width D_m: every layer also
            cross-attends (:class:`~torchflava.modules.layers.MultiHeadCrossAttention`, pre-norm, between the
            self-attention and the MLP) to a ``memory`` (B, S_m, D_m) the stack is called with, e.g. an image
            tower's states for a CoCa-style captioning decoder (with ``is_causal=True``) or an ALBEF-style
            fusion encoder.

    Returns:
        TransformerEncoder: the stack.

    Raises:
        TypeError: if a width or count is not an int, or ``is_causal`` or ``bias`` not a bool.
        ValueError: if a width or count (``cross_attention_dim`` too) is < 1, ``num_layers`` above :data:`MAX_LAYERS`, ``embed_dim`` is not a multiple of ``num_heads``,
            ``norm_eps`` is not positive, a dropout is not in [0, 1) (at 1 every activation is zeroed), or
            ``activation`` is unknown.
    """
    mlp_dropout = dropout if mlp_dropout is None else mlp_dropout
    check_architecture(  # before anything is built, each error naming this builder's argument
        "transformer_encoder",
        locals(),
        sizes=["embed_dim", "num_layers", "num_heads", "mlp_dim"]
        + ([] if cross_attention_dim is None else ["cross_attention_dim"]),
        multiples=[("embed_dim", "num_heads")],
        positive=["norm_eps"],
        dropouts=["dropout", "attention_dropout", "mlp_dropout"],
        bools=["is_causal", "bias"],
        choices={"activation": ACTIVATIONS},
    )
    if num_layers > MAX_LAYERS:  # (checked on any device: a meta build of 10^12 layers ran until killed)
        raise ValueError(
            f"transformer_encoder: num_layers must be at most {MAX_LAYERS} (no stack is deeper), got {num_layers}"
        )
    weights = num_layers * (4 * embed_dim * embed_dim + 2 * embed_dim * mlp_dim)
    if cross_attention_dim is not None:  # q and out (D x D), k and v (D x D_m) a layer
        weights += num_layers * (2 * embed_dim * embed_dim + 2 * embed_dim * cross_attention_dim)
    check_fits_in_memory(
        "transformer_encoder", weights, dict(num_layers=num_layers, embed_dim=embed_dim, mlp_dim=mlp_dim)
    )
    layers = [
        TransformerEncoderLayer(
            MultiHeadSelfAttention(embed_dim, num_heads, dropout=attention_dropout, bias=bias, is_causal=is_causal),
            MLP(embed_dim, mlp_dim, activation=make_activation(activation), dropout=mlp_dropout, bias=bias),
            attn_norm=nn.LayerNorm(embed_dim, eps=norm_eps, bias=bias),
            mlp_norm=nn.LayerNorm(embed_dim, eps=norm_eps, bias=bias),
            dropout=dropout,
            **(
                {}
                if cross_attention_dim is None
                else _cross_attention(embed_dim, num_heads, cross_attention_dim, attention_dropout, norm_eps, bias)
            ),
        )
        for _ in range(num_layers)
    ]
    return TransformerEncoder(layers)


def _cross_attention(embed_dim: int, num_heads: int, kv_dim: int, dropout: float, eps: float, bias: bool) -> dict:
    """A layer's ``cross_attn`` and ``cross_attn_norm`` (:func:`transformer_encoder`'s ``cross_attention_dim``)."""
    return {
        "cross_attn": MultiHeadCrossAttention(embed_dim, num_heads, kv_dim=kv_dim, dropout=dropout, bias=bias),
        "cross_attn_norm": nn.LayerNorm(embed_dim, eps=eps, bias=bias),
    }
