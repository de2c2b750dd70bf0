"""MLP: GELU and fc2 fused for backward (gelu(h) recomputed there, not kept) must give the same gradients."""

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.utils.checkpoint import checkpoint

from torchflava.modules.layers import MLP
from torchflava.modules.layers import mlp as mlp_module
from torchflava.modules.layers.activation import QuickGELU, activation_name
from torchflava.modules.layers.mlp import check_activations, mlp_activations


def _grads(model, x, autocast, passes=1, monkeypatch=None, fused=True):
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_()
    if monkeypatch is not None:
        monkeypatch.setattr(mlp_module, "RECOMPUTE_GELU_FOR_FC2", fused)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = sum(model(x + i).float().pow(2).sum() for i in range(passes))
    out.backward()
    return [x.grad] + [p.grad for p in model.parameters()], out.detach()


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fused_gelu_and_fc2_give_the_same_bits_as_autograd(autocast, approximate, monkeypatch):
    torch.manual_seed(0)
    model = MLP(12, 40, activation=nn.GELU(approximate=approximate)).train()
    x = torch.randn(3, 5, 12)
    fused, fused_out = _grads(model, x, autocast, monkeypatch=monkeypatch, fused=True)
    plain, plain_out = _grads(model, x, autocast, monkeypatch=monkeypatch, fused=False)
    assert_close(fused_out, plain_out, atol=0, rtol=0)
    for f, p in zip(fused, plain):
        assert f.dtype == p.dtype
        assert_close(f, p, atol=0, rtol=0)


def test_fused_path_keeps_the_hidden_tensor_and_not_its_gelu():
    torch.manual_seed(0)
    model = MLP(12, 40).train()
    out = model(torch.randn(3, 5, 12, requires_grad=True))
    assert type(out.grad_fn).__name__ == "_GeluLinearBackward"
    saved = [tuple(t.shape) for t in out.grad_fn.saved_tensors]
    assert saved == [(3, 5, 40), (12, 40)]  # h (fc1's output) and fc2's weight: no gelu(h)


def test_two_passes_under_autocast_sum_the_weight_gradient_in_fp32(monkeypatch):
    # Autocast's cached weight cast sums both passes' bf16 weight gradients in bf16; the fused path
    # casts each to fp32 first: within bf16 rounding of it, and at least as close to fp64.
    torch.manual_seed(0)
    model = MLP(12, 40).train()
    x = torch.randn(3, 5, 12)
    fused, _ = _grads(model, x, True, passes=2, monkeypatch=monkeypatch, fused=True)
    plain, _ = _grads(model, x, True, passes=2, monkeypatch=monkeypatch, fused=False)
    exact, _ = _grads(model.double(), x.double(), False, passes=2, monkeypatch=monkeypatch, fused=False)
    fc2_weight = 3  # x, fc1.weight, fc1.bias, fc2.weight, fc2.bias
    assert_close(fused[fc2_weight], plain[fc2_weight], atol=0.05, rtol=1e-2)
    err = [(g[fc2_weight].double() - exact[fc2_weight]).abs().max() for g in (fused, plain)]
    assert err[0] <= err[1]


def test_checkpointing_dropout_hooks_and_no_grad_take_the_plain_path():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 12, requires_grad=True)
    model = MLP(12, 40).train()
    ckpt = checkpoint(model, x, use_reentrant=False)
    assert type(ckpt.grad_fn).__name__ != "_GeluLinearBackward"
    assert type(MLP(12, 40, dropout=0.1).train()(x).grad_fn).__name__ != "_GeluLinearBackward"
    hooked = MLP(12, 40).train()
    hooked.fc2.register_forward_hook(lambda m, i, o: None)
    assert type(hooked(x).grad_fn).__name__ != "_GeluLinearBackward"
    quick = MLP(12, 40, activation=nn.SiLU()).train()
    assert type(quick(x).grad_fn).__name__ != "_GeluLinearBackward"
    with torch.no_grad():
        assert model(x).grad_fn is None


def test_fused_path_is_twice_differentiable():
    # Gradient penalties and Hessian-vector products differentiate the backward itself.
    torch.manual_seed(0)
    model = MLP(4, 6).double().train()
    x = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    assert type(model(x).grad_fn).__name__ == "_GeluLinearBackward"
    assert torch.autograd.gradgradcheck(lambda x: model(x), (x,))
    (grad,) = torch.autograd.grad(model(x).pow(2).sum(), x, create_graph=True)
    penalty = grad.pow(2).sum()
    penalty.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_forward_ad_trace_hooks_and_fp64_under_autocast_take_the_plain_path_or_agree(monkeypatch):
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    model = MLP(4, 6).train()
    x, tangent = torch.randn(2, 4), torch.randn(2, 4)
    with fwAD.dual_level():  # forward-mode AD: no jvp rule in the fused function
        out = model(fwAD.make_dual(x, tangent))
        got = fwAD.unpack_dual(out).tangent
    monkeypatch.setattr(mlp_module, "RECOMPUTE_GELU_FOR_FC2", False)
    with fwAD.dual_level():
        want = fwAD.unpack_dual(model(fwAD.make_dual(x, tangent))).tangent
    assert_close(got, want, atol=0, rtol=0)
    monkeypatch.setattr(mlp_module, "RECOMPUTE_GELU_FOR_FC2", True)
    traced = torch.jit.trace(model, (x.clone().requires_grad_(),), check_trace=False)  # no Python function in it
    assert "PythonOp" not in str(traced.graph)
    seen = []
    model.fc2.register_full_backward_hook(lambda m, gi, go: seen.append("fc2"))
    model(x.clone().requires_grad_()).sum().backward()
    assert seen == ["fc2"]
    double = MLP(4, 6).double().train()  # autocast leaves fp64 alone: the backward must too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = double(torch.randn(2, 4, dtype=torch.double, requires_grad=True))
    assert type(out.grad_fn).__name__ == "_GeluLinearBackward" and out.dtype == torch.double
    out.sum().backward()
    assert double.fc2.weight.grad.dtype == torch.double


def test_bf16_weight_gradient_from_a_contiguous_dy_transpose_stays_within_rounding_of_autograd(monkeypatch):
    # At ViT-B/16's rows (8 x 197) oneDNN may sum the copied dy^T in another order than autograd's
    # transposed view: a rounding apart, and as close to the fp64 gradient.
    torch.manual_seed(0)
    model = MLP(256, 1024).train()
    x = torch.randn(8, 197, 256)
    fused, _ = _grads(model, x, True, monkeypatch=monkeypatch, fused=True)
    plain, _ = _grads(model, x, True, monkeypatch=monkeypatch, fused=False)
    exact, _ = _grads(model.double(), x.double(), False, monkeypatch=monkeypatch, fused=False)
    fc2_weight = 3
    scale = exact[fc2_weight].abs().max()
    assert_close(fused[fc2_weight], plain[fc2_weight], atol=float(scale) * 2**-7, rtol=0)
    errs = [float((g[fc2_weight].double() - exact[fc2_weight]).abs().max() / scale) for g in (fused, plain)]
    assert errs[0] <= 1.5 * errs[1] and errs[0] < 2**-6
    for f, p in zip(fused[:3] + fused[4:], plain[:3] + plain[4:]):  # everything else: the same bits
        assert_close(f, p, atol=0, rtol=0)


def test_activations_are_named_and_checked():
    assert [activation_name(m) for m in (nn.GELU(), nn.GELU(approximate="tanh"), QuickGELU(), nn.ReLU())] == [
        "gelu",
        "gelu_tanh",
        "quick_gelu",
        "ReLU",
    ]
    model = nn.Sequential(MLP(4, 8, activation=QuickGELU()), MLP(4, 8), nn.GELU())  # the lone GELU: no MLP's
    assert mlp_activations(model) == {"quick_gelu", "gelu"}
    check_activations(model[:1], "quick_gelu", "why")
    with pytest.raises(ValueError, match=r"^why: build with activation='quick_gelu', got activation 'gelu'$"):
        check_activations(model, "quick_gelu", "why")


def test_inputs_of_another_width_dtype_or_device_are_refused_naming_x():
    # (each failed inside torch's product: "mat1 and mat2 shapes cannot be multiplied", "... same dtype",
    # "Tensor on device cpu is not on the expected device meta!")
    mlp = MLP(8, 16)
    with pytest.raises(ValueError, match=r"^x must be a \(\.\.\., 8\) tensor, got torch.float32 of shape \(2, 5, 7\)$"):
        mlp(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"^x must be a \(\.\.\., 8\) tensor, got torch.float32 of shape \(\)$"):
        mlp(torch.tensor(1.0))
    with pytest.raises(
        TypeError, match=r"^x must be torch.float32, the dtype of the layer's parameters .* got torch.float64$"
    ):
        mlp(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^x must be on the layer's device cpu, got meta$"):
        mlp(torch.randn(2, 8, device="meta"))
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 into fp32 parameters: autocast casts them
        assert mlp(x.bfloat16()).dtype == torch.bfloat16
