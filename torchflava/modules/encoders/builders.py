"""The generic encoder builder: a stack of pre-norm transformer layers from the modules of ``layers``."""

from torch import nn

from torchflava.modules.layers.activation import activation as make_activation
from torchflava.modules.layers.attention import MultiHeadSelfAttention
from torchflava.modules.layers.mlp import MLP
from torchflava.modules.layers.transformer import TransformerEncoder, TransformerEncoderLayer


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
        attention_dropout (float): dropout on attention probabilities.
        norm_eps (float): LayerNorm epsilon.
        activation (str): the MLP's activation: ``"gelu"``, ``"gelu_tanh"`` or ``"quick_gelu"``.
        is_causal (bool): causal self-attention (each position sees itself and earlier ones).
        bias (bool): biases in the attention projections.

    Returns:
        TransformerEncoder: the stack.

    Raises:
        ValueError: if ``num_layers`` < 1 or ``activation`` is unknown (the layers raise on bad widths).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    make_activation(activation)  # an unknown name fails here, before anything is built
    layers = [
        TransformerEncoderLayer(
            MultiHeadSelfAttention(embed_dim, num_heads, dropout=attention_dropout, bias=bias, is_causal=is_causal),
            MLP(embed_dim, mlp_dim, activation=make_activation(activation), dropout=dropout),
            attn_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
            mlp_norm=nn.LayerNorm(embed_dim, eps=norm_eps),
            dropout=dropout,
        )
        for _ in range(num_layers)
    ]
    return TransformerEncoder(layers)
