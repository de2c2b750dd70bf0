"""MultiHeadSelfAttention against a hand-written reference, masking, dropout and argument checks."""

from contextlib import nullcontext
import functools
import io
import math
import warnings

import pytest
import torch
from torch.testing import assert_close

from tests.helpers import run_threads
from torchflava.modules.layers import MultiHeadSelfAttention, attention
from torchflava.modules.layers.attention import MATH_ATTENTION_MAX_KEYS, math_attention, math_attention_wins


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


@pytest.mark.parametrize(
    "embed_dim, num_heads, error, match",
    [
        (10, 3, ValueError, "embed_dim must be a positive multiple of num_heads"),
        (24, 5, ValueError, "embed_dim must be a positive multiple of num_heads"),
        (24, 0, ValueError, "num_heads must be >= 1, got 0"),
        (0, 4, ValueError, "embed_dim must be >= 1, got 0"),
        (24, 4.0, TypeError, "num_heads must be an int, got float"),  # was accepted; forward failed in view()
        (True, 1, TypeError, "embed_dim must be an int, got bool"),
    ],
)
def test_embed_dim_must_be_divisible_by_num_heads(embed_dim, num_heads, error, match):
    with pytest.raises(error, match=match):
        MultiHeadSelfAttention(embed_dim, num_heads)


@pytest.mark.parametrize(
    "x, masks, error, match",
    [
        (
            torch.randn(7, 32),
            {},
            ValueError,
            r"x must be a \(B, S, 32\) floating-point tensor, got torch.float32 of shape \(7, 32\)",
        ),
        (torch.randn(2, 7, 40), {}, ValueError, r"got torch.float32 of shape \(2, 7, 40\)"),  # was a matmul error
        (torch.ones(2, 7, 32, dtype=torch.long), {}, ValueError, r"got torch.int64 of shape"),
        ([[0.0] * 32] * 7, {}, ValueError, r"got list"),
        (
            torch.randn(2, 7, 32),
            {"key_padding_mask": [[False] * 7] * 2},
            TypeError,
            r"key_padding_mask must be a bool tensor .*got list",
        ),
    ],
)
def test_bad_inputs_are_named_in_one_line(x, masks, error, match):
    attention = MultiHeadSelfAttention(32, 4)
    with pytest.raises(error, match=match):
        attention(x, **masks)


def test_bad_sizes_of_the_other_blocks_are_named_not_raised_from_torch():
    from torchflava.modules.encoders import transformer_encoder
    from torchflava.modules.heads import ITMHead, MaskedPredictionHead
    from torchflava.modules.layers import MLP, PatchEmbedding, Pooler, TextEmbedding, TokenEmbedding

    cases = [
        (lambda: MLP(16, -1), ValueError, "hidden_dim must be >= 1, got -1"),
        (lambda: MLP(16, 0), ValueError, "hidden_dim must be >= 1, got 0"),  # was accepted
        (lambda: Pooler(-4), ValueError, "embed_dim must be >= 1, got -4"),
        (lambda: ITMHead(0), ValueError, "embed_dim must be >= 1, got 0"),
        (lambda: MaskedPredictionHead(16, -2), ValueError, "vocab_size must be >= 1, got -2"),
        (lambda: PatchEmbedding(32, 8, 3, -1), ValueError, "embed_dim must be >= 1, got -1"),
        (lambda: PatchEmbedding(-8, 8, 3, 16), ValueError, "image_size must be >= 1, got -8"),
        (lambda: PatchEmbedding(32, 8, 0, 16), ValueError, "in_channels must be >= 1, got 0"),
        (lambda: TextEmbedding(-1, 16, 8), ValueError, "vocab_size must be >= 1, got -1"),
        (lambda: TextEmbedding(10, 16, 0), ValueError, "max_seq_len must be >= 1, got 0"),
        (lambda: TextEmbedding(10, 16, 8, pad_token_id=10), ValueError, "pad_token_id must be an id below vocab_size"),
        (lambda: TokenEmbedding(10, -3, 8), ValueError, "embed_dim must be >= 1, got -3"),
        (lambda: transformer_encoder(embed_dim=16, num_layers=1, num_heads=2, mlp_dim=32, attention_dropout=1.0),
         ValueError, r"transformer_encoder: attention_dropout must be in \[0, 1\), got 1.0"),
    ]  # fmt: skip
    for build, error, match in cases:
        with pytest.raises(error, match=match):
            build()


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range(dropout):
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        MultiHeadSelfAttention(24, 3, dropout=dropout)


def test_dropout_bounds_accepted():
    assert MultiHeadSelfAttention(24, 3, dropout=0.0).dropout == 0.0
    assert MultiHeadSelfAttention(24, 3, dropout=0.99).dropout == 0.99


# --- the matmul path that replaces SDPA's fused CPU kernel when autograd records short sequences ---


def _qkv(b=3, h=2, s_q=7, s=7, hd=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, s_q, hd, generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(b, h, s, hd, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    return q, k, v


def _masks(b=3, s_q=7, s=7):
    gen = torch.Generator().manual_seed(1)
    block = torch.rand(b, 1, s_q, s, generator=gen) < 0.6
    block[..., 0] = True  # every query row keeps at least one key
    return {
        "none": None,
        "key_padding": ~PADDING[:, None, None, :],
        "block": block,
        "causal": torch.ones(s_q, s, dtype=torch.bool).tril()[None, None],
    }


def _outputs_and_grads(fn, q, k, v, allowed, grad, forward_context=nullcontext):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    with forward_context():
        out = fn(*leaves, allowed)
    out.backward(grad)  # outside autocast, as the training loop runs it
    return [out.detach()] + [t.grad for t in leaves]


def _sdpa(q, k, v, allowed):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.mark.parametrize("mask", ["none", "key_padding", "block", "causal"])
def test_math_attention_matches_sdpa_in_float32(mask):
    q, k, v = _qkv()
    allowed = _masks()[mask]
    grad = torch.randn(q.shape)
    got = _outputs_and_grads(math_attention, q, k, v, allowed, grad)
    want = _outputs_and_grads(_sdpa, q, k, v, allowed, grad)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(g, w, atol=1e-6, rtol=1e-5, msg=name)


def test_math_attention_for_a_subset_of_queries():
    q, k, v = _qkv(s_q=2, s=7)
    allowed = ~PADDING[:, None, None, :]
    grad = torch.randn(q.shape)
    for g, w in zip(
        _outputs_and_grads(math_attention, q, k, v, allowed, grad), _outputs_and_grads(_sdpa, q, k, v, allowed, grad)
    ):
        assert_close(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mask", ["none", "key_padding"])
def test_math_attention_in_bfloat16_is_as_accurate_as_sdpa(mask):
    # Scores and softmax in fp32, probabilities rounded to bf16 for the product with v, as SDPA's
    # fused kernel rounds; the backward's products in bf16 (the softmax gradient accumulated in fp32,
    # rounded once). Peaked attention (scores of std ~9, as in trained models) is where bf16 scores
    # would show: rounding them gives errors up to 2.5e-2 here, against <= 9.3e-3 for ours and
    # <= 1.2e-2 for SDPA over six seeds (outputs and q, k, v gradients, relative to the largest value).
    q, k, v = _qkv(b=3, h=4, s_q=7, s=7, hd=32, dtype=torch.bfloat16)
    q, k = ((3 * t).detach().requires_grad_() for t in (q, k))
    allowed = _masks()[mask]
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).bfloat16()
    exact = _outputs_and_grads(_sdpa, q.double(), k.double(), v.double(), allowed, grad.double())
    for fn, bound in ((math_attention, 1e-2), (_sdpa, 1.5e-2)):
        got = _outputs_and_grads(fn, q, k, v, allowed, grad)
        assert got[0].dtype == torch.bfloat16
        for g, e in zip(got, exact):
            assert (g.double() - e).abs().max() <= bound * e.abs().max()
    # Autocast changes nothing inside, forward or backward: the fp32 matmuls are not cast down to bf16.
    plain = _outputs_and_grads(math_attention, q, k, v, allowed, grad)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    under_autocast = _outputs_and_grads(math_attention, q, k, v, allowed, grad, forward_context=autocast)
    with autocast():
        backward_too = _outputs_and_grads(math_attention, q, k, v, allowed, grad)
    for g, w, b in zip(under_autocast, plain, backward_too):
        assert_close(g, w, atol=0, rtol=0)
        assert_close(b, w, atol=0, rtol=0)


@pytest.mark.parametrize("mask", ["none", "key_padding", "block", "causal"])
def test_math_attention_backward_passes_gradcheck(mask):
    q, k, v = (t.detach().double().requires_grad_() for t in _qkv(b=3, h=2, s_q=7, s=7, hd=4))
    allowed = _masks()[mask]
    assert torch.autograd.gradcheck(lambda q, k, v: math_attention(q, k, v, allowed), (q, k, v))


def test_math_attention_keeps_only_q_k_v_and_the_rounded_probabilities_for_backward():
    q, k, v = _qkv(b=2, h=2, s_q=5, s=5, hd=4, dtype=torch.bfloat16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        math_attention(q, k, v, ~PADDING[:2, None, None, :5])
    assert sorted((tuple(t.shape), t.dtype) for t in saved) == sorted(
        [((2, 2, 5, 4), torch.bfloat16)] * 3 + [((2, 2, 5, 5), torch.bfloat16)]
    )


def test_math_attention_gives_zeros_for_a_query_with_no_allowed_key():
    q, k, v = _qkv(b=2, s_q=4, s=4)
    allowed = torch.tensor([[True, True, False, False], [False, False, False, False]])[:, None, None, :]
    grad = torch.randn(q.shape)
    got = _outputs_and_grads(math_attention, q, k, v, allowed, grad)
    want = _outputs_and_grads(_sdpa, q, k, v, allowed, grad)
    assert (got[0][1] == 0).all() and all(torch.isfinite(t).all() for t in got)
    for g, w in zip(got, want):
        assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_math_path_is_chosen_on_cpu_with_autograd_for_short_bf16_sequences():
    image = _qkv(s_q=197, s=197, dtype=torch.bfloat16)  # a ViT-B/16 image
    assert math_attention_wins(*image)
    longest = MATH_ATTENTION_MAX_KEYS[torch.bfloat16]
    assert math_attention_wins(*_qkv(s_q=4, s=longest, dtype=torch.bfloat16))
    assert not math_attention_wins(*_qkv(s_q=4, s=longest + 1, dtype=torch.bfloat16))
    for dtype in (torch.float32, torch.float64):  # no measured gain in a training step: SDPA
        assert not math_attention_wins(*_qkv(dtype=dtype))
    assert not math_attention_wins(*(t.detach() for t in image))  # nothing to differentiate
    with torch.no_grad():
        assert not math_attention_wins(*image)
    with torch.inference_mode():
        assert not math_attention_wins(*image)


def test_math_attention_limits_apply_within_the_block_only_and_refuse_bad_limits():
    image = _qkv(s_q=197, s=197, dtype=torch.bfloat16)
    before = dict(MATH_ATTENTION_MAX_KEYS)
    with attention.math_attention_limits({}):
        assert not math_attention_wins(*image)  # SDPA at every length
    assert math_attention_wins(*image) and attention.MATH_ATTENTION_MAX_KEYS == before
    fp32 = _qkv(s_q=4, s=8, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="inside"):  # restored when the block raises too
        with attention.math_attention_limits({torch.float32: 8}):
            assert math_attention_wins(*fp32)
            raise RuntimeError("inside")
    assert not math_attention_wins(*fp32) and attention.MATH_ATTENTION_MAX_KEYS == before
    for bad in (None, {"bfloat16": 224}, {torch.bfloat16: -1}, {torch.bfloat16: True}, [(torch.bfloat16, 2)]):
        with pytest.raises(ValueError, match="max_keys must be a dict from torch dtypes to non-negative ints"):
            with attention.math_attention_limits(bad):
                pytest.fail("entered the block")
    assert attention.MATH_ATTENTION_MAX_KEYS == before


@pytest.mark.parametrize("is_causal", [False, True])
def test_training_forward_takes_the_math_path_with_sdpa_values_and_gradients(is_causal, monkeypatch):
    # The module's wiring (masks, causal, query subsets) checked in fp32, where both paths agree to
    # rounding; the dtype-based choice itself is tested above.
    monkeypatch.setattr(attention, "MATH_ATTENTION_MAX_KEYS", {torch.float32: 16})
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(24, 3, is_causal=is_causal)
    x = torch.randn(3, 7, 24, requires_grad=True)
    calls = []
    real, real_fused = attention.math_attention, attention._MathSelfAttention.apply
    monkeypatch.setattr(attention, "math_attention", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(attention._MathSelfAttention, "apply", lambda *a: calls.append(1) or real_fused(*a))

    def run(**kwargs):
        attn.zero_grad()
        x.grad = None
        out = attn(x, **kwargs)
        out.pow(2).sum().backward()
        return [out.detach(), x.grad] + [p.grad for p in attn.parameters()]

    for kwargs in ({}, {"key_padding_mask": PADDING}, {"key_padding_mask": PADDING, "query_positions": slice(0, 1)}):
        got = run(**kwargs)
        assert calls, kwargs
        calls.clear()
        with attention.math_attention_limits({}):
            want = run(**kwargs)
        assert not calls
        for g, w in zip(got, want):
            assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_dropout_in_training_keeps_sdpa(monkeypatch):
    monkeypatch.setattr(attention, "math_attention", lambda *a: pytest.fail("math path with dropout"))
    monkeypatch.setattr(attention._MathSelfAttention, "apply", lambda *a: pytest.fail("math path with dropout"))
    attn = MultiHeadSelfAttention(24, 3, dropout=0.1).train()
    attn(torch.randn(2, 5, 24, requires_grad=True)).sum().backward()


def test_bf16_autocast_training_takes_the_math_path(monkeypatch):
    calls = []
    real = attention._MathSelfAttention.apply
    monkeypatch.setattr(attention._MathSelfAttention, "apply", lambda *a: calls.append(a[0].dtype) or real(*a))
    attn = MultiHeadSelfAttention(24, 3).train()
    x = torch.randn(3, 7, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, key_padding_mask=PADDING)
    out.float().sum().backward()
    assert calls == [torch.bfloat16]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x, key_padding_mask=PADDING)  # inference: SDPA
    assert calls == [torch.bfloat16]


def test_bf16_training_attention_compiles_and_agrees_with_eager():
    # The matmul path (a custom autograd Function) under torch.compile, forward and backward.
    torch._dynamo.reset()
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(24, 3).train()
    x = torch.randn(3, 7, 24)

    def run(forward):
        attn.zero_grad()
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(leaf, key_padding_mask=PADDING)
        out.float().pow(2).sum().backward()
        return [out.float(), leaf.grad] + [p.grad.clone() for p in attn.parameters()]

    eager = run(attn)
    compiled = run(torch.compile(attn, fullgraph=True))
    for got, want in zip(compiled, eager):
        assert_close(got, want, atol=2e-2, rtol=2e-2)


def _masked_reference(attn, x, blocked):
    """softmax over the keys ``blocked`` (B, S, S) leaves, per head; rows with no key left are not compared."""
    b, s, d = x.shape
    h, hd = attn.num_heads, d // attn.num_heads
    q, k, v = (t.reshape(b, s, h, hd).transpose(1, 2) for t in (x @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, -1))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(blocked[:, None], float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, s, d)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def test_causal_attention_obeys_a_mask_on_the_querys_own_key():
    attn, x = make_attention(is_causal=True), torch.randn(3, 7, 24, dtype=torch.float64)
    future = torch.ones(7, 7, dtype=torch.bool).triu(1)
    own = torch.eye(7, dtype=torch.bool).expand(3, 7, 7).clone()
    own[:, 0, 0] = False  # query 0 keeps its only key
    expected = _masked_reference(attn, x, own | future)
    assert_close(attn(x, attn_mask=own), expected, atol=1e-10, rtol=0)  # each query blocked from itself
    # A padded key is ignored by every query, its own query included (row 2 pads position 1).
    expected = _masked_reference(attn, x, PADDING[:, None, :] | future)
    out = attn(x, key_padding_mask=PADDING)
    kept = ~(PADDING[:, None, :] | future).all(dim=-1)  # (B, S) queries with a key left
    assert_close(out[kept], expected[kept], atol=1e-10, rtol=0)
    blocked = torch.ones(3, 7, 7, dtype=torch.bool)
    assert not attn(x, attn_mask=blocked).sub(attn.out_proj.bias).abs().max()  # no key at all: zeros


def test_negative_query_positions_are_counted_from_the_end():
    attn, x = make_attention(is_causal=True), torch.randn(3, 7, 24, dtype=torch.float64)
    full = attn(x)
    assert_close(attn(x, query_positions=torch.tensor([-1])), full[:, -1:], atol=1e-12, rtol=0)
    per_row = torch.tensor([[-1], [-3], [2]])
    assert_close(attn(x, query_positions=per_row), full[torch.arange(3)[:, None], per_row], atol=1e-12, rtol=0)


def test_a_2d_attn_mask_applies_to_every_row_even_when_its_side_equals_the_heads():
    attn, x = make_attention(embed_dim=24, num_heads=8), torch.randn(2, 8, 24, dtype=torch.float64)
    prefix_lm = torch.ones(8, 8, dtype=torch.bool).triu(1)
    prefix_lm[:3, :3] = False  # a bidirectional prefix of 3, causal after it
    assert_close(attn(x, attn_mask=prefix_lm), attn(x, attn_mask=prefix_lm.expand(2, 8, 8)), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(8, 8\) or \(2, 8, 8\) .* got \(8, 7\)"):
        attn(x, attn_mask=prefix_lm[:, :7])
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 8\) .* got \(2, 6\)"):
        attn(x, key_padding_mask=torch.zeros(2, 6, dtype=torch.bool))


def test_math_attention_refuses_a_second_derivative_rather_than_giving_a_wrong_one():
    q, k, v = (t.detach().double().requires_grad_() for t in _qkv(b=1, h=2, s_q=5, s=5, hd=4))
    (grad_q,) = torch.autograd.grad(math_attention(q, k, v).pow(2).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_q.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_math_attention_leaves_its_inputs_as_they_were(dtype):
    # Contiguous inputs of the scores' own dtype are used as they are, not copied: nothing may be
    # scaled or masked in place on them.
    q, k, v = _qkv(dtype=dtype)
    before = [t.detach().clone() for t in (q, k, v)]
    math_attention(q, k, v, _masks()["block"]).backward(torch.randn(q.shape).to(dtype))
    for t, b in zip((q, k, v), before):
        assert torch.equal(t.detach(), b) and t._version == 0


def test_bf16_score_product_is_exact_and_leaves_the_process_precision_as_it_was(monkeypatch):
    # bf16 queries and keys: their products are exact in fp32, so the score product may run on the
    # CPU's bf16 units (oneDNN's fpmath mode) with fp32 sums and fp32 output, inside the call only.
    # Off by default (the setting is process-wide: another thread's fp32 matmuls would see it).
    assert attention.BF16_SCORE_PRODUCTS is False
    monkeypatch.setattr(attention, "BF16_SCORE_PRODUCTS", True)
    q, k, v = (t.detach() for t in _qkv(b=2, h=3, s_q=9, s=9, hd=32, dtype=torch.bfloat16))
    q, k = 3 * q, 3 * k  # peaked attention, where rounding the scores to bf16 would show
    before = torch.backends.mkldnn.matmul.fp32_precision
    seen = []
    real = torch.baddbmm
    monkeypatch.setattr(
        torch, "baddbmm", lambda *a, **kw: seen.append(torch.backends.mkldnn.matmul.fp32_precision) or real(*a, **kw)
    )
    with torch.autocast("cpu", enabled=False):
        _, probs = attention._attend(q, k, v, None)
    assert seen == ["bf16" if attention._BF16_UNITS and torch.backends.mkldnn.enabled else before]
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    exact = ((q.double() @ k.double().transpose(-2, -1)) / math.sqrt(32)).softmax(-1)
    # fp32 scores: the probabilities are the exact ones rounded to bf16, to a last bit in rare ties
    assert ((probs.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-30).all()
    assert (probs != exact.to(torch.bfloat16)).float().mean() < 0.02
    # switched off: the float32 product, the setting untouched, the same scores to rounding
    monkeypatch.setattr(attention, "BF16_SCORE_PRODUCTS", False)
    seen.clear()
    with torch.autocast("cpu", enabled=False):
        _, fp32_probs = attention._attend(q, k, v, None)
    assert seen == [before]
    assert ((fp32_probs.double() - probs.double()).abs() <= probs.double().abs() * 2**-7).all()
    monkeypatch.setattr(attention, "BF16_SCORE_PRODUCTS", True)
    # an error inside the product restores the precision too
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        attention._attend(q, k, v, None)
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def test_fused_projection_path_gives_the_separate_q_k_v_gradients_bit_for_bit(monkeypatch):
    # _MathSelfAttention writes the gradient straight into the projection's (B, S, 3, H, hd) layout;
    # through math_attention on q, k and v autograd stacks them: the same values, to the bit.
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(96, 3).train()
    x = torch.randn(3, 7, 96)

    def run():
        attn.zero_grad()
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(leaf, key_padding_mask=PADDING)
        out.float().pow(2).sum().backward()
        return [out, leaf.grad] + [p.grad.clone() for p in attn.parameters()]

    fused = run()

    def separate(qkv, num_heads, allowed):
        b, s, width = qkv.shape
        q, k, v = qkv.view(b, s, 3, num_heads, width // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)
        return math_attention(q, k, v, allowed)

    monkeypatch.setattr(attention._MathSelfAttention, "apply", separate)
    for got, want in zip(fused, run()):
        assert torch.equal(got, want)


def test_bf16_score_precision_is_restored_with_threads_attending_at_once(monkeypatch):
    monkeypatch.setattr(attention, "BF16_SCORE_PRODUCTS", True)
    before = torch.backends.mkldnn.matmul.fp32_precision
    q, k, v = (t.detach() for t in _qkv(b=2, h=2, s_q=16, s=16, hd=8, dtype=torch.bfloat16))
    want = attention._attend(q, k, v, None)[0]

    def work():
        for _ in range(50):
            assert torch.equal(attention._attend(q, k, v, None)[0], want)

    _, errors = run_threads(work, 4)
    assert not errors and torch.backends.mkldnn.matmul.fp32_precision == before


def test_math_path_limit_follows_the_cpu(monkeypatch):
    # with AMX the matmul path wins up to 400 keys (a ViT-L/14's 257 among them), without to 224
    assert attention.default_math_attention_max_keys(True) == {torch.bfloat16: 400}
    assert attention.default_math_attention_max_keys(False) == {torch.bfloat16: 224}
    amx = torch.cpu._is_amx_tile_supported()
    assert attention.MATH_ATTENTION_MAX_KEYS == attention.default_math_attention_max_keys(amx)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a PyTorch without the probe: no AMX
    assert attention._has_amx() is False


def test_inputs_of_another_dtype_or_device_are_refused_naming_x():
    # (standalone, outside a layer: each failed inside torch's product, naming nothing)
    attn, x = MultiHeadSelfAttention(8, 2).eval(), torch.randn(2, 5, 8)
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(TypeError, match=rf"^x must be torch.float32, the dtype .* got {dtype}$"):
            attn(x.to(dtype))
    with pytest.raises(ValueError, match=r"^x must be on the layer's device cpu, got meta$"):
        attn(x.to("meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 parameters under autocast take a bf16 stream
        assert attn(x.bfloat16()).shape == (2, 5, 8)


@pytest.mark.parametrize(
    "query_positions, expected",
    [
        (None, (0, 5, 16)),
        (slice(0, 1), (0, 1, 16)),
        (torch.tensor([0, 2]), (0, 2, 16)),
        (torch.zeros(0, 2, dtype=torch.long), (0, 2, 16)),
        (torch.zeros(0, 5, dtype=torch.bool), (0, 16)),
    ],
    ids=["all", "slice", "shared_indices", "row_indices", "mask"],
)
def test_an_empty_batch_gives_an_empty_output(query_positions, expected):
    """B = 0 gives an empty result, as torch's nn.MultiheadAttention does; with query positions it failed
    inside torch (cannot reshape tensor of 0 elements into shape [0, -1, 2, 8])."""
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 2)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert attn(torch.randn(0, 5, 16), query_positions=query_positions).shape == expected


def test_an_empty_sequence_is_refused_naming_its_length():
    """S = 0 returned a (B, 0, D) output, which a pooled read downstream failed on inside torch (or
    averaged to NaN); torch's own attention returns it empty too. Refused, by the attention, a layer and a
    stack, naming the shape; an empty batch of an encoder stack still gives an empty output."""
    from torchflava.modules.encoders import transformer_encoder

    torch.manual_seed(0)
    encoder = transformer_encoder(embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
    message = r"^x must hold at least one position \(S >= 1\), got shape \(2, 0, 16\)$"
    for module in (MultiHeadSelfAttention(16, 2), encoder.layers[0], encoder):
        with pytest.raises(ValueError, match=message):
            module(torch.randn(2, 0, 16))
    assert encoder(torch.randn(0, 5, 16)).last_hidden_state.shape == (0, 5, 16)


def test_a_bf16_attention_traced_with_grad_holds_no_python_function_and_saves():
    """torch.jit.trace records with grad on (its default); bf16 attention then took the matmul path, a Python
    autograd function, which the traced graph held: saving it failed ("Could not export Python function call
    '_MathSelfAttention'"), and the trace's own check (again without grad, on SDPA) found the graphs differed."""
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 2).to(torch.bfloat16).eval()
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    assert math_attention_wins(*_qkv(s=5, dtype=torch.bfloat16))  # (eagerly, with grad: the matmul path)
    with warnings.catch_warnings():  # torch.jit.trace is deprecated, still used to export
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(attn, (x,))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        assert_close(loaded(x), attn(x), atol=0, rtol=0)
