"""MultiHeadSelfAttention against a hand-written reference, masking, dropout and argument checks."""

import math

import pytest
import torch
from torch.testing import assert_close

from torchflava.modules.layers import MultiHeadSelfAttention


def reference_attention(attn: MultiHeadSelfAttention, x: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(hd)) V per head, from the fused qkv Linear, then out_proj."""
    b, s, d = x.shape
    h, hd = attn.num_heads, d // attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # (B, S, 3D): [q | k | v]
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]

    def heads(t):  # (B, S, D) -> (B, H, S, hd)
        return t.reshape(b, s, h, hd).permute(0, 2, 1, 3)

    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(hd)  # (B, H, S, S)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = scores.softmax(dim=-1) @ heads(v)  # (B, H, S, hd)
    out = out.permute(0, 2, 1, 3).reshape(b, s, d)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def make_attention(embed_dim=24, num_heads=3, **kwargs) -> MultiHeadSelfAttention:
    attn = MultiHeadSelfAttention(embed_dim, num_heads, **kwargs).double().eval()
    with torch.no_grad():  # non-zero biases so a dropped bias is caught
        attn.qkv.bias.normal_()
        attn.out_proj.bias.normal_()
    return attn


PADDING = torch.tensor(
    [
        [False, False, False, False, True, True, True],
        [False, False, False, False, False, False, False],
        [False, True, False, False, True, False, True],  # interior padding too
    ]
)


def test_output_shape():
    attn = MultiHeadSelfAttention(32, 4)
    assert attn.head_dim == 8
    assert attn(torch.randn(2, 5, 32)).shape == (2, 5, 32)


def test_matches_reference_without_mask():
    attn = make_attention()
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    assert_close(attn(x), reference_attention(attn, x), atol=1e-6, rtol=0)


def test_matches_reference_with_key_padding_mask():
    attn = make_attention()
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    out = attn(x, key_padding_mask=PADDING)
    assert_close(out, reference_attention(attn, x, PADDING), atol=1e-6, rtol=0)
    # The mask matters: the unmasked result differs on the rows that have padding.
    unmasked = attn(x)
    assert not torch.allclose(out[0], unmasked[0], atol=1e-3)
    assert_close(out[1], unmasked[1], atol=1e-6, rtol=0)  # row 1 has no padding


def test_padded_keys_have_no_influence():
    attn = make_attention()
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    changed = x.clone()
    changed[PADDING] = 100 * torch.randn(int(PADDING.sum()), 24, dtype=torch.float64)
    out = attn(x, key_padding_mask=PADDING)
    out_changed = attn(changed, key_padding_mask=PADDING)
    keep = ~PADDING
    assert_close(out_changed[keep], out[keep], atol=1e-9, rtol=0)
    # Padded queries still attend to the real keys and stay finite.
    assert torch.isfinite(out_changed).all()
    # Without the mask the same change does move the outputs at real positions.
    assert not torch.allclose(attn(changed)[keep], attn(x)[keep], atol=1e-3)


def test_dropout_only_in_training():
    attn = make_attention(dropout=0.5)
    x = torch.randn(2, 6, 24, dtype=torch.float64)
    reference = reference_attention(attn, x)
    attn.eval()
    assert_close(attn(x), reference, atol=1e-6, rtol=0)
    assert_close(attn(x), attn(x), atol=0, rtol=0)
    attn.train()
    first, second = attn(x), attn(x)
    assert not torch.allclose(first, reference, atol=1e-3)
    assert not torch.allclose(first, second, atol=1e-3)


@pytest.mark.parametrize("embed_dim, num_heads", [(10, 3), (24, 5), (24, 0), (0, 4)])
def test_embed_dim_must_be_divisible_by_num_heads(embed_dim, num_heads):
    with pytest.raises(ValueError, match="embed_dim must be a positive multiple of num_heads"):
        MultiHeadSelfAttention(embed_dim, num_heads)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range(dropout):
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        MultiHeadSelfAttention(24, 3, dropout=dropout)


def test_dropout_bounds_accepted():
    assert MultiHeadSelfAttention(24, 3, dropout=0.0).dropout == 0.0
    assert MultiHeadSelfAttention(24, 3, dropout=0.99).dropout == 0.99
