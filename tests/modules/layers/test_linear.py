"""torchflava's linear: oneDNN for large fp32 CPU products, F.linear otherwise; same values, same gradients."""

import warnings

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.testing import assert_close

from torchflava.modules.layers import MLP, Linear, MultiHeadSelfAttention, linear, pack_linears
from torchflava.modules.layers.linear import onednn_linear_wins

pytestmark = pytest.mark.skipif(not linear._ONEDNN, reason="this PyTorch build has no oneDNN linear")

FORCED = {"inference": 0, "training": 0}


@pytest.fixture
def forced(monkeypatch):
    """Every fp32 CPU product goes to oneDNN, whatever its size; returns the list of its calls' shapes."""
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_MACS", FORCED)
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_WIDTH", FORCED)
    calls = []

    def counting(name):
        kernel = getattr(linear, name)

        def count(*args):
            calls.append((name,) + tuple(tuple(a.shape) for a in args if a is not None))
            return kernel(*args)

        monkeypatch.setattr(linear, name, count)

    counting("_onednn_mm")
    counting("_onednn_grad_input")
    return calls


def operands(m=6, k=5, n=4, leading=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*leading, m, k, generator=g)
    return x, torch.randn(n, k, generator=g), torch.randn(n, generator=g)


def fp64_reference(x, w, b, grad):
    """Output and the three gradients of x @ w.T + b, in fp64."""
    leaves = [t.double().requires_grad_() for t in (x, w, b)]
    out = F.linear(*leaves)
    out.backward(grad.double())
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("leading", [(), (3,), (2, 3)])
def test_forward_and_gradients_match_fp64(forced, leading):
    x, w, b = operands(leading=leading)
    grad = torch.randn(*leading, 6, 4)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = linear.linear(*leaves)
    out.backward(grad)
    assert len(forced) == 3  # forward, grad of x, grad of weight
    for got, want in zip([out] + [t.grad for t in leaves], fp64_reference(x, w, b, grad)):
        assert got.dtype == torch.float32
        assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_without_bias_and_with_only_some_gradients(forced):
    x, w, _ = operands()
    grad = torch.randn(2, 6, 4)
    w_leaf = w.clone().requires_grad_()
    out = linear.linear(x, w_leaf)  # x needs no gradient: only the weight's product runs backward
    out.backward(grad)
    assert len(forced) == 2
    assert_close(out, x @ w.T, atol=1e-5, rtol=1e-5)
    assert_close(w_leaf.grad, (grad.reshape(-1, 4).T @ x.reshape(-1, 5)), atol=1e-5, rtol=1e-5)
    b_leaf = torch.randn(4).requires_grad_()  # only the bias needs a gradient
    linear.linear(x, w, b_leaf).backward(grad)
    assert_close(b_leaf.grad, grad.sum((0, 1)), atol=1e-5, rtol=1e-5)


def test_non_contiguous_input_and_output_gradient(forced):
    x, w, b = operands()
    x = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strides of a transposed tensor
    grad = torch.randn(2, 4, 6).transpose(1, 2)  # (2, 6, 4), not contiguous
    assert not x.is_contiguous() and not grad.is_contiguous()
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    leaves[0] = x.detach().requires_grad_()  # keeps its strides
    out = linear.linear(*leaves)
    out.backward(grad)
    assert len(forced) == 3
    for got, want in zip([out] + [t.grad for t in leaves], fp64_reference(x, w, b, grad)):
        assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    w_strided = w.t().contiguous().t()  # a weight with transposed strides (e.g. a tied weight's view)
    assert_close(linear.linear(x, w_strided, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    assert len(forced) == 4


@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_strided_bias_gives_f_linears_values_and_gradients(forced, layout):
    # oneDNN reads a bias as a dense vector: a strided one gave other elements, an expanded one memory past it
    x, w, b = operands()
    bias = torch.randn(8)[::2] if layout == "strided" else torch.randn(1).expand(4)
    assert not bias.is_contiguous()
    with torch.no_grad():
        assert_close(linear.linear(x, w, bias), F.linear(x, w, bias), atol=1e-5, rtol=1e-5)
    grad = torch.randn(2, 6, 4)
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_(), bias.detach().requires_grad_()]
    out = linear.linear(*leaves)
    out.backward(grad)
    assert len(forced) == 4  # inference, then forward, grad of x, grad of weight
    for got, want in zip([out] + [t.grad for t in leaves], fp64_reference(x, w, bias, grad)):
        assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 5), (3, 0)], ids=["no-rows", "no-rows-3d", "no-features"])
def test_empty_products_go_to_f_linear(forced, shape):
    # thresholds of 0 admitted them: oneDNN refused the empty weight-gradient product, and zero input
    # features divided by zero when the product's size was counted
    x = torch.randn(*shape, requires_grad=True)
    w, b = torch.randn(4, shape[-1], requires_grad=True), torch.randn(4, requires_grad=True)
    out = linear.linear(x, w, b)
    out.backward(torch.randn(out.shape))
    assert_close(out, F.linear(x, w, b), atol=0, rtol=0)
    assert out.shape == (*shape[:-1], 4) and x.grad.shape == shape and w.grad.shape == w.shape
    assert forced == []


def test_inference_mode_and_no_grad(forced):
    x, w, b = operands()
    with torch.inference_mode():
        assert_close(linear.linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        out = linear.linear(x, w.requires_grad_(), b)
    assert not out.requires_grad
    assert len(forced) == 2


def test_double_backward_gives_f_linears_second_derivatives(forced):
    """A gradient penalty through a product oneDNN ran (the default for large fp32 products on AVX-512 AMD
    CPUs): its backward, recorded with create_graph=True, runs torch's products and can be differentiated
    again, as F.linear's. It raised ``trying to differentiate twice a function that was marked with
    @once_differentiable``, on those CPUs only (MLP's own backward keeps second derivatives everywhere)."""

    def penalty(fn, x, w, b):
        gx, gw = torch.autograd.grad(fn(x, w, b).square().sum(), (x, w), create_graph=True)
        return gx.square().sum() + (gw * w).sum()

    x, w, b = operands()
    got = [t.clone().requires_grad_() for t in (x, w, b)]
    penalty(linear.linear, *got).backward()
    assert forced[0][0] == "_onednn_mm"  # the forward on oneDNN
    want = [t.double().requires_grad_() for t in (x, w, b)]
    penalty(F.linear, *want).backward()
    for a, e in zip(got, want):
        assert_close(a.grad.double(), e.grad, atol=1e-4, rtol=1e-5)
    forced.clear()
    x, w, b = (t.clone().requires_grad_() for t in operands())
    linear.linear(x, w, b).square().sum().backward()  # a first-order backward stays on oneDNN
    assert [call[0] for call in forced] == ["_onednn_mm", "_onednn_grad_input", "_onednn_mm"]


def test_the_choice(monkeypatch):
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_MACS", {"inference": 100, "training": 1000})
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_WIDTH", {"inference": 4, "training": 3})
    x, w = torch.randn(5, 4), torch.randn(8, 4)  # 160 multiply-adds
    assert onednn_linear_wins(x, w, training=False)
    assert not onednn_linear_wins(x, w, training=True)  # a training product must be larger
    assert onednn_linear_wins(torch.randn(50, 4), w, training=True)
    assert onednn_linear_wins(torch.randn(50, 3), torch.randn(8, 3), training=True)
    assert not onednn_linear_wins(x[:2], w, training=False)  # 64 multiply-adds
    assert not onednn_linear_wins(torch.randn(50, 3), torch.randn(8, 3), training=False)  # narrower than 4
    assert not onednn_linear_wins(x.bfloat16(), w.bfloat16(), training=False)
    assert not onednn_linear_wins(x.double(), w.double(), training=False)
    assert not onednn_linear_wins(x[0], w, training=False)  # a vector input
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_linear_wins(x, w, training=False)
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_MACS", None)
    assert not onednn_linear_wins(x, w, training=False)


def test_the_default_enables_onednn_only_where_it_was_measured_to_win():
    assert linear.default_onednn_min_macs("AuthenticAMD", "AVX512") == linear.ONEDNN_WINS_MIN_MACS
    assert linear.default_onednn_min_macs("AuthenticAMD", "AVX512") is not linear.ONEDNN_WINS_MIN_MACS  # a copy
    for vendor, capability in [("AuthenticAMD", "AVX2"), ("GenuineIntel", "AVX512"), ("", "AVX512"), ("", "DEFAULT")]:
        assert linear.default_onednn_min_macs(vendor, capability) is None
    expected = linear.default_onednn_min_macs(linear.cpu_vendor(), torch.backends.cpu.get_cpu_capability())
    assert linear.ONEDNN_FP32_MIN_MACS == expected  # this machine's default
    assert isinstance(linear.cpu_vendor(), str)


def test_the_thresholds_keep_small_products_on_f_linear(monkeypatch):
    monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_MACS", dict(linear.ONEDNN_WINS_MIN_MACS))
    small = torch.randn(64, 128), torch.randn(384, 128)  # the tiny recipe's widths
    vit = torch.randn(1576, 768), torch.randn(3072, 768)  # ViT-B/16's fc1 at batch 8
    assert not onednn_linear_wins(*small, training=False)
    assert onednn_linear_wins(*vit, training=False) and onednn_linear_wins(*vit, training=True)
    assert not onednn_linear_wins(torch.randn(197, 768), torch.randn(768, 768), training=True)
    width_256 = torch.randn(2048, 256), torch.randn(1024, 256)  # oneDNN loses this one in training only
    assert onednn_linear_wins(*width_256, training=False) and not onednn_linear_wins(*width_256, training=True)


def test_other_cases_fall_back_to_f_linear(forced):
    x, w, b = operands()
    assert_close(linear.linear(x.double(), w.double(), b.double()), F.linear(x.double(), w.double(), b.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear.linear(x, w, b).dtype == torch.bfloat16
    assert len(forced) == 0
    with pytest.raises(RuntimeError, match="same dtype"):  # F.linear's own errors
        linear.linear(x, w, b.double())
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        linear.linear(x, torch.randn(4, 3))


def test_compiled_uses_f_linear(forced):
    x, w, b = operands()
    compiled = torch.compile(linear.linear, fullgraph=True, backend="eager")
    assert_close(compiled(x, w, b), F.linear(x, w, b))
    assert len(forced) == 0


def test_func_transforms_and_tracing_use_f_linear(forced):
    x, w, b = operands()
    module = Linear(5, 4)
    per_row = torch.func.vmap(module)(x)  # (2, 6, 4): vmap over the leading dimension
    assert_close(per_row, F.linear(x, module.weight, module.bias))
    weight = module.weight.detach()
    grad = torch.func.grad(lambda w: torch.func.functional_call(module, {"weight": w}, (x,)).sum())(weight)
    assert_close(grad, torch.ones(12, 4).T @ x.reshape(-1, 5))
    with warnings.catch_warnings():  # torch.jit.trace is deprecated, still used to export
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, x, check_trace=False)
    assert "mkldnn" not in str(traced.graph)
    assert_close(traced(x), F.linear(x, module.weight, module.bias))
    assert len(forced) == 0


@pytest.mark.parametrize("grad", [False, True])
def test_forward_mode_ad_uses_f_linear(forced, grad):
    x, w, b = operands()
    tangent = torch.randn_like(x)
    with torch.set_grad_enabled(grad), torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, tangent)
        out = torch.autograd.forward_ad.unpack_dual(linear.linear(dual, w, b))
    assert out.tangent is not None  # oneDNN's op has no jvp: it dropped the tangent under no_grad
    assert_close(out.tangent, F.linear(tangent, w))
    assert len(forced) == 0
    assert_close(linear.linear(x, w, b), F.linear(x, w, b))  # outside the dual level: oneDNN again
    assert len(forced) == 1


def test_linear_module_is_an_nn_linear():
    torch.manual_seed(0)
    ours = Linear(5, 4)
    torch.manual_seed(0)
    theirs = nn.Linear(5, 4)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key in theirs.state_dict():
        assert torch.equal(ours.state_dict()[key], theirs.state_dict()[key])  # same initialisation
    x = torch.randn(3, 5)
    assert_close(ours(x), theirs(x))
    packed = pack_linears(nn.Sequential(Linear(256, 256)).eval())  # still converted for bf16 inference
    assert type(packed[0]).__name__ == "PackedLinear"


def test_blocks_train_alike_on_both_paths(monkeypatch):
    """An MLP and an attention block: outputs and every parameter gradient, oneDNN against F.linear."""
    torch.manual_seed(0)
    blocks = nn.Sequential(MLP(16, 32), MultiHeadSelfAttention(16, 2))
    x = torch.randn(3, 7, 16)
    results = []
    for macs, width in ((None, FORCED), (FORCED, FORCED)):
        monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_MACS", macs)
        monkeypatch.setattr(linear, "ONEDNN_FP32_MIN_WIDTH", width)
        out = blocks(x)
        out.pow(2).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in blocks.parameters()])
        blocks.zero_grad(set_to_none=True)
    for a, b in zip(*results):
        assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_onednn_fp32_thresholds_apply_within_the_block_only_and_refuse_bad_thresholds():
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    before = linear.ONEDNN_FP32_MIN_MACS, linear.ONEDNN_FP32_MIN_WIDTH
    with linear.onednn_fp32_thresholds(FORCED, FORCED):
        assert onednn_linear_wins(x, w, training=False)
        with linear.onednn_fp32_thresholds(None):  # nested: F.linear for everything, widths kept
            assert not onednn_linear_wins(x, w, training=False)
            assert linear.ONEDNN_FP32_MIN_WIDTH == FORCED
        assert onednn_linear_wins(x, w, training=True)
    assert (linear.ONEDNN_FP32_MIN_MACS, linear.ONEDNN_FP32_MIN_WIDTH) == before
    with pytest.raises(RuntimeError, match="inside"):  # restored when the block raises too
        with linear.onednn_fp32_thresholds(FORCED, FORCED):
            raise RuntimeError("inside")
    assert (linear.ONEDNN_FP32_MIN_MACS, linear.ONEDNN_FP32_MIN_WIDTH) == before
    bad = ({"inference": 0}, {"inference": 0, "training": -1}, {"inference": 0, "training": 1.5}, 0, "all")
    for macs in bad:
        with pytest.raises(ValueError, match="min_macs must be a dict of non-negative ints keyed inference and"):
            with linear.onednn_fp32_thresholds(macs):
                pytest.fail("entered the block")
    with pytest.raises(ValueError, match="min_width must be a dict"):
        with linear.onednn_fp32_thresholds(FORCED, {"training": 0, "inference": None}):
            pytest.fail("entered the block")
    assert (linear.ONEDNN_FP32_MIN_MACS, linear.ONEDNN_FP32_MIN_WIDTH) == before


# bf16 autocast without autograd: oneDNN's linear with the bias in its epilogue (AUTOCAST_FUSED_BIAS)

needs_bf16 = pytest.mark.skipif(not linear.ONEDNN_BF16, reason="this CPU has no native bf16 for oneDNN")


@pytest.fixture
def fused_calls(monkeypatch):
    """The operand shapes of every product :func:`linear` sends to the fused bf16 path."""
    calls = []
    wins = linear.autocast_fused_bias_wins

    def count(x, weight, bias):
        taken = wins(x, weight, bias)
        if taken:
            calls.append((tuple(x.shape), tuple(weight.shape)))
        return taken

    monkeypatch.setattr(linear, "autocast_fused_bias_wins", count)
    return calls


def autocast_f_linear(x, w, b):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return F.linear(x, w, b)


def bf16_linear(x, w, b):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return linear.linear(x, w, b)


@needs_bf16
@pytest.mark.parametrize(
    "shape",
    [(3, 40, 8), (2, 3, 5, 8), (16, 8), (40, 8)],
    ids=["3d", "4d", "the-fewest-rows", "2d"],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_bias_path_gives_autocast_f_linears_values_to_the_bit(fused_calls, shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(*shape, generator=g), torch.randn(24, 8, generator=g), torch.randn(24, generator=g)
    b = b if with_bias else None
    with torch.no_grad():
        out = bf16_linear(x, w, b)
        assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], 24)
        assert torch.equal(out, autocast_f_linear(x, w, b))
    assert fused_calls == [(shape, (24, 8))]


@needs_bf16
def test_fused_bias_path_takes_strided_and_bf16_operands(fused_calls):
    g = torch.Generator().manual_seed(1)
    cases = [
        (torch.randn(16, 40, generator=g).t(), torch.randn(8, 16, generator=g), torch.randn(8, generator=g)),
        (
            torch.randn(32, 17, generator=g)[:, 1:],
            torch.randn(16, 8, generator=g).t(),
            torch.randn(16, generator=g)[::2],
        ),
        (torch.randn(35, 16, generator=g).bfloat16(), torch.randn(8, 16, generator=g).bfloat16(), None),
        (torch.randn(1, 16, generator=g).expand(33, 16), torch.randn(8, 16, generator=g), torch.randn(8, generator=g)),
    ]
    with torch.no_grad():
        for x, w, b in cases:
            assert torch.equal(bf16_linear(x, w, b), autocast_f_linear(x, w, b))
    assert len(fused_calls) == len(cases)


@needs_bf16
@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_fused_bias_path_leaves_a_strided_bf16_bias_to_f_linear(fused_calls, layout):
    # autocast casts no bf16 tensor: the bias reaches the product as it is, and oneDNN read it as dense
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(3, 40, 8, generator=g), torch.randn(24, 8, generator=g)
    b = torch.randn(48, generator=g).bfloat16()[::2] if layout == "strided" else torch.randn(1).bfloat16().expand(24)
    with torch.no_grad():
        out = bf16_linear(x, w, b)
        assert torch.equal(out, autocast_f_linear(x, w, b))
        exact = x.double() @ w.bfloat16().double().T + b.double()
        assert (out.double() - exact).abs().max() <= 2**-7 * exact.abs().max()
    assert fused_calls == []


@needs_bf16
@pytest.mark.parametrize("frozen", [False, True])
def test_fused_bias_path_only_from_twice_as_many_rows_as_input_features(fused_calls, frozen):
    w = nn.Parameter(torch.randn(8, 16), requires_grad=not frozen)
    few, many = torch.randn(31, 16), torch.randn(2, 16, 16)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            for x in (few, many):
                assert torch.equal(bf16_linear(x, w, None), autocast_f_linear(x, w, None))
    assert fused_calls == [((2, 16, 16), (8, 16))] * 2


@needs_bf16
def test_fused_bias_path_stays_off_with_autograd_other_dtypes_and_when_disabled(fused_calls, monkeypatch):
    x, w, b = torch.randn(40, 16), nn.Parameter(torch.randn(8, 16)), torch.randn(8)
    out = bf16_linear(x, w, b)  # autograd records: F.linear, whose backward autocast knows
    out.float().sum().backward()
    assert_close(w.grad, torch.ones(40, 8).T @ x.bfloat16().float(), atol=0.1, rtol=0.02)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.float16):  # another autocast dtype
            assert linear.linear(x, w, b).dtype == torch.float16
        assert bf16_linear(x.double(), w.double(), b.double()).dtype == torch.float64  # autocast leaves fp64
        assert linear.linear(x, w, b).dtype == torch.float32  # no autocast
        monkeypatch.setattr(linear, "AUTOCAST_FUSED_BIAS", False)
        assert torch.equal(bf16_linear(x, w.detach(), b), autocast_f_linear(x, w.detach(), b))
    assert fused_calls == []


@needs_bf16
def test_encoders_give_the_same_features_with_and_without_the_fused_bias_path(monkeypatch, fused_calls):
    from torchflava.models import clip_model

    torch.manual_seed(0)
    model = clip_model(
        embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, vision_mlp_dim=64,
        context_length=12, vocab_size=64, text_width=32, text_layers=2, text_heads=2, text_mlp_dim=64,
    ).eval()  # fmt: skip
    pixels = torch.randn(8, 3, 32, 32)  # 136 rows of 17 tokens
    results = []
    for flag in (True, False):
        monkeypatch.setattr(linear, "AUTOCAST_FUSED_BIAS", flag)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(model.encode_image(pixels))
        # the first layer's 4 products and the last one's keys and values (its other rows: 8 CLS tokens)
        assert len(fused_calls) == 5
    assert torch.equal(*results)


@needs_bf16
def test_fused_bias_path_keeps_a_tangent_on_the_bias(fused_calls):
    """oneDNN's op has no jvp rule: a tangent on the bias alone was dropped without an error."""
    x, w, b = torch.randn(3, 40, 16), torch.randn(8, 16), torch.randn(8)
    with torch.autograd.forward_ad.dual_level(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear.linear(x, w, torch.autograd.forward_ad.make_dual(b, torch.ones(8)))
        tangent = torch.autograd.forward_ad.unpack_dual(out).tangent
    assert tangent is not None and torch.equal(tangent.float(), torch.ones(3, 40, 8))
    assert fused_calls == []


@needs_bf16
def test_fused_bias_path_leaves_strided_inputs_of_three_dims_to_f_linear(fused_calls):
    """F.linear multiplies a non-contiguous (.., M, in) input and adds the bias after (two roundings to
    bf16): the fused path rounded once, ~1 ulp apart in a quarter of the outputs."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(600, 2, 256, generator=g).transpose(0, 1), torch.randn(64, 256), torch.randn(64)
    with torch.no_grad():
        assert torch.equal(bf16_linear(x, w, b), autocast_f_linear(x, w, b))
        assert torch.equal(bf16_linear(x.contiguous(), w, b), autocast_f_linear(x.contiguous(), w, b))
    assert fused_calls == [((2, 600, 256), (64, 256))]  # the contiguous one only


@needs_bf16
def test_onednn_paths_respect_mkldnn_off_and_dispatch_modes(fused_calls, forced):
    """With oneDNN switched off F.linear runs PyTorch's own bf16 GEMM (other values); a dispatch mode
    (make_fx, FlopCounterMode) should see F.linear's ops, not a oneDNN op it cannot count or export
    (the fp32 path stays on oneDNN there: selective checkpointing runs in a dispatch mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, w, b = torch.randn(4, 400, 768), torch.randn(768, 768), torch.randn(768)
    with torch.no_grad():
        with torch.backends.mkldnn.flags(enabled=False):
            assert torch.equal(bf16_linear(x, w, b), autocast_f_linear(x, w, b))
            linear.linear(x, w, b)  # fp32, oneDNN forced: F.linear too
        counter = FlopCounterMode(display=False)
        with counter:
            bf16_linear(x, w, b)
        assert counter.get_total_flops() == 2 * 1600 * 768 * 768
    assert fused_calls == [] and forced == []


def test_bias_must_be_a_bool():
    # ("no" is truthy: nn.Linear made a bias)
    with pytest.raises(TypeError, match=r"^bias must be a bool, got str 'no'$"):
        Linear(8, 4, bias="no")
    assert Linear(8, 4, bias=False).bias is None
