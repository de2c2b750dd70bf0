"""Multi-head self-attention on ``F.scaled_dot_product_attention``.

Shapes: x (B, S, D) -> (B, S, D); key_padding_mask (B, S) bool with ``True = padding``
(that key is ignored by every query); attn_mask (B, S, S) bool with ``True = blocked``
(query i may not attend to key j), e.g. block-diagonal for packed sequences.
"""

from typing import Optional, Union

import torch
from torch import Tensor, nn
import torch.nn.functional as F


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with one fused QKV projection and the fused SDPA kernel.

    Args:
        embed_dim (int): width D of the input and output.
        num_heads (int): number of heads H; ``embed_dim`` must be divisible by it.
        dropout (float): dropout on the attention probabilities, active in training only.
        bias (bool): whether the projections have biases.

    Raises:
        ValueError: if ``embed_dim`` is not divisible by ``num_heads`` or ``dropout`` is not in [0, 1).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim must be a positive multiple of num_heads, got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        query_positions: Optional[Union[Tensor, slice]] = None,
    ) -> Tensor:
        """Attend every position to every position not masked out.

        Args:
            x (Tensor): (B, S, D) input.
            key_padding_mask (Optional[Tensor]): (B, S) bool, ``True`` marks keys to ignore.
            attn_mask (Optional[Tensor]): (B, S, S) bool, ``True`` blocks query i from key j.
            query_positions (Optional[Union[Tensor, slice]]): (P,) indices or a slice: indices of the only positions whose output is
                wanted: queries are computed for them alone (keys and values for all S).

        Returns:
            Tensor: (B, S, D) output after the output projection; (B, P, D) with ``query_positions``.

        Raises:
            TypeError: if a mask is not boolean.
        """
        b, s, d = x.shape
        if query_positions is None:
            # (B, S, 3D) -> (3, B, H, S, hd)
            q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self._project_subset(x, query_positions)
            attn_mask = None if attn_mask is None else attn_mask[:, query_positions]
        for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None and mask.dtype != torch.bool:
                raise TypeError(f"{name} must be a bool tensor (True = masked), got dtype {mask.dtype}")
        allowed = None  # SDPA's boolean mask means True = may attend
        if key_padding_mask is not None:
            allowed = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        if attn_mask is not None:
            blocked = attn_mask[:, None]  # (B, 1, S, S)
            allowed = ~blocked if allowed is None else allowed & ~blocked
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(b, q.shape[2], d)  # (B, H, S_q, hd) -> (B, S_q, D)
        return self.out_proj(out)

    def _project_subset(self, x: Tensor, query_positions: Union[Tensor, slice]) -> tuple[Tensor, Tensor, Tensor]:
        """Queries for the selected positions only, keys and values for all: (B, H, P | S, hd)."""
        b, s, d = x.shape
        if isinstance(self.qkv, nn.Linear):
            w, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, query_positions], w[:d], None if bias is None else bias[:d])
            kv = F.linear(x, w[d:], None if bias is None else bias[d:])
        else:  # a projection whose weight cannot be sliced (e.g. PackedLinear): project all, keep some
            qkv = self.qkv(x)
            q, kv = qkv[:, query_positions, :d], qkv[..., d:]
        q = q.reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.view(b, s, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v
