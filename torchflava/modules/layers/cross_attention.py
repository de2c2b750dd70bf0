"""Multi-head cross-attention: queries from a sequence, keys and values from another (a memory).

Shapes: x (B, L, D) queries, memory (B, S, D_kv) keys and values (D_kv may differ from D: an image
tower's width beside a text decoder's) -> (B, L, D); memory_padding_mask (B, S) bool with
``True = padding`` (that memory position is ignored by every query). A row whose memory is all
padding gets a zero attention output (the output projection's bias alone), as SDPA gives it.

The layer a CoCa-style captioner, an ALBEF/BLIP-style fusion encoder or a Flamingo-like resampler
attends with: :class:`~torchflava.modules.layers.TransformerEncoderLayer` takes one as its
``cross_attn`` and its stack passes ``memory`` through.
"""

from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.layers.attention import check_heads, check_hidden_states, math_attention, math_attention_wins
from torchflava.modules.layers.linear import Linear
from torchflava.utils.checks import check_input_dtype, check_int, describe_tensor


def check_memory(memory: object, memory_padding_mask: object, x: Tensor, kv_dim: Optional[int]) -> None:
    """ValueError or TypeError naming ``memory`` or ``memory_padding_mask`` unless ``memory`` is a
    (B, S, ``kv_dim``) floating-point tensor (any width where ``kv_dim`` is None) with x's batch size B and
    device, and ``memory_padding_mask`` None or a (B, S) bool tensor on that device: checked before any work.

    Args:
        memory (object): the keys' and values' source, (B, S, D_kv).
        memory_padding_mask (object): None, or (B, S) bool, ``True = padding``.
        x (Tensor): the queries' sequence, (B, L, D), already checked.
        kv_dim (Optional[int]): the memory's width D_kv, None for any.

    Raises:
        TypeError: if ``memory_padding_mask`` is not a bool tensor.
        ValueError: if a shape or device does not fit, or ``memory`` holds no position.
    """
    check_hidden_states(memory, kv_dim, "memory")
    if memory.shape[0] != x.shape[0]:
        raise ValueError(f"memory must have x's batch size {x.shape[0]}, got shape {tuple(memory.shape)}")
    if memory.device != x.device:
        raise ValueError(f"memory must be on x's device {x.device}, got {memory.device}")
    if memory_padding_mask is None:
        return
    if not isinstance(memory_padding_mask, Tensor) or memory_padding_mask.dtype != torch.bool:
        raise TypeError(
            f"memory_padding_mask must be a bool tensor (True = padding), got {describe_tensor(memory_padding_mask)}"
        )
    if tuple(memory_padding_mask.shape) != tuple(memory.shape[:2]):
        raise ValueError(
            f"memory_padding_mask must have shape (B, S) = {tuple(memory.shape[:2])} for memory of shape "
            f"{tuple(memory.shape)}, got {tuple(memory_padding_mask.shape)}"
        )
    if memory_padding_mask.device != x.device:
        raise ValueError(f"memory_padding_mask must be on x's device {x.device}, got {memory_padding_mask.device}")


class MultiHeadCrossAttention(nn.Module):
    """Cross-attention with a query projection, one fused key-value projection of the memory and the
    fused SDPA kernel (:func:`~torchflava.modules.layers.attention.math_attention` where SDPA's CPU
    backward is slow: bf16 training over short memories, as for self-attention).

    Its parameters are three :class:`~torchflava.modules.layers.linear.Linear` layers (``q_proj``
    D -> D, ``kv_proj`` D_kv -> 2D laid out ``[k | v]``, ``out_proj`` D -> D) and nothing of its own:
    :func:`~torchflava.modules.init.init_weights` initialises them, also after ``to_empty`` from the
    meta device.

    Args:
        embed_dim (int): width D of the queries' sequence and of the output.
        num_heads (int): number of heads H; ``embed_dim`` must be divisible by it.
        kv_dim (Optional[int]): width D_kv of the memory; None: ``embed_dim``.
        dropout (float): dropout on the attention probabilities, active in training only.
        bias (bool): whether the projections have biases.

    Raises:
        TypeError: if a size is not an int, ``dropout`` not a number, or ``bias`` not a bool.
        ValueError: if a size is < 1, ``embed_dim`` is not divisible by ``num_heads`` or ``dropout`` is not
            in [0, 1).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kv_dim: Optional[int] = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_heads(embed_dim, num_heads, dropout, bias)
        kv_dim = embed_dim if kv_dim is None else check_int("kv_dim", kv_dim, 1)
        self.embed_dim = embed_dim
        self.kv_dim = kv_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = Linear(embed_dim, embed_dim, bias=bias)
        self.kv_proj = Linear(kv_dim, 2 * embed_dim, bias=bias)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, x: Tensor, memory: Tensor, *, memory_padding_mask: Optional[Tensor] = None) -> Tensor:
        """Attend every position of ``x`` to every position of its row's ``memory`` not masked out.

        Args:
            x (Tensor): (B, L, D) queries' sequence.
            memory (Tensor): (B, S, D_kv) keys' and values' sequence.
            memory_padding_mask (Optional[Tensor]): (B, S) bool, ``True`` marks memory positions to ignore.

        Returns:
            Tensor: (B, L, D) output after the output projection.

        Raises:
            TypeError: if ``memory_padding_mask`` is not a bool tensor, or ``x`` or ``memory`` not of the
                parameters' dtype (outside autocast over fp32 parameters).
            ValueError: if ``x`` is not a (B, L, embed_dim) floating-point tensor, ``memory`` not a
                (B, S, kv_dim) one of x's batch size and device, or the mask's shape or device does not fit.
        """
        check_hidden_states(x, self.embed_dim)
        check_memory(memory, memory_padding_mask, x, self.kv_dim)
        check_input_dtype(x, self.q_proj.weight if isinstance(self.q_proj, nn.Linear) else None)
        check_input_dtype(memory, self.kv_proj.weight if isinstance(self.kv_proj, nn.Linear) else None, "memory")
        b, length, d = x.shape
        s, h, hd = memory.shape[1], self.num_heads, self.head_dim
        q = self.q_proj(x).view(b, length, h, hd).transpose(1, 2)  # (B, H, L, hd)
        k, v = self.kv_proj(memory).view(b, s, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, S, hd) each
        allowed = None if memory_padding_mask is None else ~memory_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        dropout_p = self.dropout if self.training else 0.0
        if dropout_p == 0.0 and math_attention_wins(q, k, v):
            out = math_attention(q, k, v, allowed)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, d))  # (B, H, L, hd) -> (B, L, D)
