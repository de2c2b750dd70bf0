"""PackedLinear and pack_linears: bf16 inference linears cast (and packed for oneDNN) once."""

import copy

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.testing import assert_close

from torchflava.modules.layers import MLP, MultiHeadSelfAttention, PackedLinear, pack_linears
from torchflava.modules.layers.packed_linear import onednn_packing_available

ONEDNN = onednn_packing_available(torch.bfloat16)
BF16 = dict(atol=3e-2, rtol=2e-2)  # a few bf16 roundings of O(1) values


def autocast_bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def make_linear(in_features: int = 48, out_features: int = 80, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_unpacked_layer_is_autocast_linear_to_the_bit(bias):
    linear = make_linear(bias=bias)
    layer = PackedLinear(
        linear.weight.detach().bfloat16(), None if linear.bias is None else linear.bias.detach().bfloat16(), pack=False
    )
    x = torch.randn(3, 7, 48)
    with torch.inference_mode(), autocast_bf16():
        expected = linear(x)
        out = layer(x)
    assert not layer.packed and out.dtype == torch.bfloat16
    assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.skipif(not ONEDNN, reason="this PyTorch build or CPU has no oneDNN bf16 linear")
@pytest.mark.parametrize("shape", [(5, 48), (2, 9, 48), (1, 1, 48)])
def test_packed_layer_matches_autocast(shape):
    linear = make_linear()
    layer = PackedLinear.from_linear(linear)
    assert layer.packed and layer.weight.is_mkldnn
    x = torch.randn(*shape)
    with torch.inference_mode(), autocast_bf16():
        expected = linear(x)
        out = layer(x)
    assert out.shape == (*shape[:-1], 80) and out.dtype == torch.bfloat16
    assert_close(out.float(), expected.float(), **BF16)
    assert not torch.allclose(out.float(), F.linear(x, linear.weight, linear.bias), atol=1e-4)  # bf16, not fp32


@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_layer_from_a_bf16_linear_with_a_strided_bias(layout):
    # from_linear keeps a bf16 bias as it is; oneDNN read a strided or expanded one as dense
    linear = make_linear().bfloat16()
    bias = torch.randn(160).bfloat16()[::2] if layout == "strided" else torch.randn(1).bfloat16().expand(80)
    linear.bias = nn.Parameter(bias)
    layer = PackedLinear.from_linear(linear)
    x = torch.randn(2, 9, 48)
    with torch.inference_mode():
        out = layer(x)
    exact = x.bfloat16().double() @ linear.weight.double().T + bias.double()
    assert out.dtype == torch.bfloat16
    assert_close(out.double(), exact, **BF16)


@pytest.mark.parametrize("pack", [False, pytest.param(True, marks=pytest.mark.skipif(not ONEDNN, reason="no oneDNN"))])
@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_a_strided_bias_gives_the_bits_of_f_linear_on_a_contiguous_one(pack, layout):
    # Unpacked, the bias was kept strided: F.linear on a (B, S, D) input then rounds the product to
    # bf16 before adding it (one ulp, 0.125 here, off the single rounding of a contiguous bias).
    torch.manual_seed(0)
    weight = torch.randn(80, 48).bfloat16()
    bias = torch.randn(160).bfloat16()[::2] if layout == "strided" else torch.randn(1).bfloat16().expand(80)
    x = torch.randn(2, 9, 48)
    layer = PackedLinear(weight, bias, pack=pack)
    with torch.inference_mode():
        out = layer(x)
        expected = F.linear(x.bfloat16(), weight, bias.contiguous())
    assert layer.bias.is_contiguous() and torch.equal(layer.bias, bias)
    assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("features", [(0, 8), (8, 0)], ids=["no-input-features", "no-output-features"])
def test_layer_without_features_is_autocast_linear(features):
    # oneDNN has no empty product: packing such a weight failed inside torch
    linear = nn.Linear(*features).eval()
    layer = PackedLinear.from_linear(linear)
    x = torch.randn(3, features[0])
    with torch.inference_mode():
        out = layer(x)
        with autocast_bf16():
            expected = linear(x)
    assert not layer.packed and out.shape == (3, features[1])
    assert_close(out, expected, atol=0, rtol=0)


def test_layer_takes_strided_input_and_runs_without_autocast():
    linear = make_linear()
    layer = PackedLinear.from_linear(linear)
    x = torch.randn(4, 10, 96)[:, ::2, :48]  # not contiguous
    with torch.no_grad():
        out = layer(x)
        with autocast_bf16():
            expected = linear(x)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), expected.float(), **BF16)


def test_layer_errors():
    linear = make_linear()
    layer = PackedLinear.from_linear(linear)
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., 48\)"):
        layer(torch.randn(2, 47))
    with pytest.raises(RuntimeError, match="inference"):
        layer(torch.randn(2, 48, requires_grad=True))
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        PackedLinear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="dtype"):
        PackedLinear.from_linear(linear, torch.float32)
    with pytest.raises(ValueError, match="weight must be"):
        PackedLinear(torch.randn(3), None, pack=False)
    with pytest.raises(ValueError, match="bias must be"):
        PackedLinear(torch.randn(3, 2).bfloat16(), torch.randn(2).bfloat16(), pack=False)
    assert "packed=" in repr(layer) and layer.weight.dtype == torch.bfloat16


def test_pack_linears_replaces_every_linear_and_keeps_the_outputs():
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(attn=MultiHeadSelfAttention(32, 4), mlp=MLP(32, 64), head=nn.Linear(32, 5))).eval()
    packed = pack_linears(copy.deepcopy(model))
    assert not any(isinstance(m, nn.Linear) for m in packed.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 5
    assert list(packed.parameters()) == []  # nothing left to train; the fp32 linear weights are gone
    x = torch.randn(2, 6, 32)
    with torch.inference_mode(), autocast_bf16():
        for name in ("attn", "mlp", "head"):
            assert_close(packed[name](x).float(), model[name](x).float(), **BF16, msg=name)
        # the attention's query-subset path (only the CLS output) agrees with the full one
        assert_close(packed["attn"](x, query_positions=slice(0, 1)).float(), model["attn"](x)[:, :1].float(), **BF16)


def test_pack_linears_errors():
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        pack_linears("model")
    with pytest.raises(ValueError, match="eval mode"):
        pack_linears(MLP(4, 8))
    with pytest.raises(ValueError, match="dtype"):
        pack_linears(MLP(4, 8).eval(), dtype=torch.float16)
    with pytest.raises(TypeError, match="PackedLinear.from_linear"):
        pack_linears(nn.Linear(2, 2).eval())


def test_a_packed_model_refuses_training_copies_and_integer_inputs_in_one_line():
    """After .train() it ran silently (dropout on) and failed in backward; deepcopy and torch.save
    failed inside torch (NotImplementedError: Cannot access storage of OpaqueTensorImpl)."""
    import copy
    import io

    from torchflava.modules.layers import MLP, pack_linears

    model = pack_linears(MLP(16, 32).eval())
    x = torch.randn(2, 16)
    with torch.no_grad():
        model(x)
        model.train()
        with pytest.raises(RuntimeError, match=r"^PackedLinear is for inference: a packed model cannot be trained"):
            model(x)
        model.eval()
        with pytest.raises(TypeError, match=r"^x must be a floating-point tensor, got torch.int64"):
            model.fc1(torch.ones(2, 16, dtype=torch.long))
    for copy_it in (copy.deepcopy, lambda m: torch.save(m, io.BytesIO())):
        with pytest.raises(
            TypeError, match=r"^a PackedLinear \(a model after pack_linears\) cannot be copied or pickled"
        ):
            copy_it(model)


def test_a_packed_model_refuses_conversions_its_weights_would_miss():
    """.half() and .to(float64) left the packed bf16 weights as they were and the next LayerNorm failed
    inside torch ("mixed dtype (CPU): expect parameter to have scalar type of Float"); .to("meta") left
    them on the CPU. Conversions that keep the dtype and device still run."""
    model = pack_linears(nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 4)).eval())
    x = torch.randn(3, 16)
    with torch.inference_mode(), autocast_bf16():
        expected = model(x)
    message = r"^a PackedLinear keeps its torch.bfloat16 weight on cpu: convert or move the model before pack_linears"
    for convert, got in (
        (lambda m: m.half(), "torch.float16 on cpu"),
        (lambda m: m.to(torch.float64), "torch.float64 on cpu"),
        (lambda m: m.float(), "torch.float32 on cpu"),
        (lambda m: m.to("meta"), "torch.bfloat16 on meta"),
    ):
        with pytest.raises(TypeError, match=message + r".*got a conversion to " + got):
            convert(model)
    model.to("cpu").to(torch.device("cpu")).requires_grad_(False)
    with torch.inference_mode(), autocast_bf16():
        assert torch.equal(model(x), expected)


@pytest.mark.skipif(not ONEDNN, reason="this PyTorch build or CPU has no oneDNN bf16 linear")
def test_a_packed_model_compiles_with_inductors_default_settings():
    """Inductor lowers oneDNN's op only on a frozen (constant) weight: without torch._inductor.config.freezing the
    compile failed ("weight must be a graph constant"). Now one opaque op, in the graph: the eager bits."""
    model = pack_linears(nn.Sequential(make_linear(8, 4)).eval())
    x = torch.randn(5, 8)
    with torch.no_grad():
        expected = model(x)
        torch._dynamo.reset()
        got = torch.compile(model, fullgraph=True)(x)  # (fullgraph: no graph break around the layer)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


class Residual(nn.Module):
    """A linear layer whose output is added to (a transformer's residual, FLAVA's multimodal input)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.linear = make_linear(8, 8, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + residual


@pytest.mark.skipif(not ONEDNN, reason="this PyTorch build or CPU has no oneDNN bf16 linear")
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_model_compiles_with_inductors_freezing(bias):
    """With torch._inductor.config.freezing, inductor's fusion of a following add took a packed weight for one it had
    packed itself: any packed layer added to failed to compile (an AssertionError from inside inductor)."""
    import torch._inductor.config as inductor_config

    model = pack_linears(Residual(bias).eval())
    x, residual = torch.randn(5, 8), torch.randn(8).bfloat16()
    with torch.no_grad():
        expected = model(x, residual)
        torch._dynamo.reset()
        with inductor_config.patch(freezing=True):
            got = torch.compile(model, fullgraph=True)(x, residual)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
