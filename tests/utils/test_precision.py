"""bf16 products as fp32 GEMMs (torchflava.utils.precision): each product is the fp32 product of its bf16
operands rounded to bf16 once, forward and backward; everything else is PyTorch's own."""

import pytest
import torch
import torch.nn.functional as F

from torchflava.modules.encoders import transformer_encoder
from torchflava.utils import precision
from torchflava.utils.precision import bf16_products_in_fp32, bf16_products_region, emulates_bf16_products

bf16 = torch.bfloat16


def rand(*shape, dtype=bf16, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def rounded(product):
    """``product`` (a function of fp32 tensors) of bf16 operands, in fp32, rounded to bf16."""
    return lambda *operands, **kwargs: product(*(t.float() for t in operands), **kwargs).to(bf16)


PRODUCTS = {
    "mm": (torch.mm, lambda: (rand(24, 300), rand(300, 40, seed=1)), {}),
    "addmm": (torch.addmm, lambda: (rand(40, seed=2), rand(24, 300), rand(300, 40, seed=1)), dict(beta=0.5, alpha=2)),
    "bmm": (torch.bmm, lambda: (rand(3, 24, 300), rand(3, 300, 40, seed=1)), {}),
    "baddbmm": (
        torch.baddbmm,
        lambda: (rand(3, 24, 40, seed=2), rand(3, 24, 300), rand(3, 300, 40, seed=1)),
        dict(beta=0.25, alpha=0.125),
    ),
    "matmul": (torch.matmul, lambda: (rand(2, 3, 24, 300), rand(300, 40, seed=1)), {}),
    "linear": (F.linear, lambda: (rand(2, 24, 300), rand(40, 300, seed=1), rand(40, seed=2)), {}),
}


@pytest.mark.parametrize("grad_mode", ["grad", "inference_mode"])
@pytest.mark.parametrize("name", PRODUCTS)
def test_a_bf16_product_is_the_fp32_product_rounded_once(name, grad_mode):
    """Under torch.inference_mode the composite ops (linear, matmul) reach the region whole, not as mm/addmm."""
    op, operands, kwargs = PRODUCTS[name]
    operands = operands()
    with bf16_products_in_fp32(), torch.inference_mode(grad_mode == "inference_mode"):
        got = op(*operands, **kwargs)
    assert got.dtype == bf16
    assert torch.equal(got, rounded(op)(*operands, **kwargs))
    exact = op(*(t.double() for t in operands), **kwargs)
    # as close to the exact sums as PyTorch's own bf16 kernel (one rounding of fp32 sums: within half a bf16 step)
    native = op(*operands, **kwargs)
    assert (got.double() - exact).abs().max() <= (native.double() - exact).abs().max() * 1.01 + 1e-6


@pytest.mark.parametrize("name", ["mm", "addmm", "bmm", "baddbmm"])
def test_the_out_forms_write_the_rounded_product_into_out(name):
    op, operands, kwargs = PRODUCTS[name]
    operands = operands()
    out = torch.full_like(rounded(op)(*operands, **kwargs), float("nan"))
    with bf16_products_in_fp32():
        returned = op(*operands, **kwargs, out=out)
    assert returned is out and torch.equal(out, rounded(op)(*operands, **kwargs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_other_dtypes_and_mixed_operands_are_pytorchs_own(dtype):
    a, b, c = rand(24, 300, dtype=dtype), rand(300, 40, dtype=dtype, seed=1), rand(40, dtype=dtype, seed=2)
    with bf16_products_in_fp32():
        got = torch.addmm(c, a, b)
    assert got.dtype == dtype and torch.equal(got, torch.addmm(c, a, b))
    with pytest.raises(RuntimeError) as outside:
        torch.mm(rand(4, 8), rand(8, 4, dtype=dtype))
    with bf16_products_in_fp32(), pytest.raises(RuntimeError) as inside:  # refused as PyTorch refuses it
        torch.mm(rand(4, 8), rand(8, 4, dtype=dtype))
    assert str(inside.value) == str(outside.value)


@pytest.mark.parametrize("masking", ["none", "bool", "additive", "causal"])
def test_attention_under_inference_mode_computes_in_fp32_from_the_bf16_operands(masking):
    q, k, v = (rand(2, 3, 37, 16, seed=s) for s in range(3))
    mask = {"none": None, "bool": rand(37, 37, seed=4) > -0.5, "additive": rand(37, 37, seed=4), "causal": None}[
        masking
    ]
    causal = masking == "causal"
    with bf16_products_in_fp32(), torch.inference_mode():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    mask32 = mask.float() if mask is not None and mask.dtype == bf16 else mask
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask32, is_causal=causal)
    assert out.dtype == bf16 and torch.equal(out, want.to(bf16))


@pytest.mark.parametrize("masking", ["none", "bool", "additive", "causal"])
def test_attention_forward_and_backward_compute_in_fp32_from_the_bf16_operands(masking):
    q, k, v = (rand(2, 3, 37, 16, seed=s).requires_grad_() for s in range(3))
    mask = {
        "none": None,
        "bool": rand(37, 37, dtype=torch.float32, seed=4) > -0.5,
        "additive": rand(37, 37, seed=4),
        "causal": None,
    }[masking]
    kwargs = dict(attn_mask=mask, is_causal=masking == "causal")
    grad = rand(2, 3, 37, 16, seed=5)
    with bf16_products_in_fp32():
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        grads = torch.autograd.grad(out, (q, k, v), grad)
    assert out.dtype == bf16 and all(g.dtype == bf16 for g in grads)
    # the fp32 kernels' results on the bf16 operands (the backward's: from the rounded output it is given), rounded
    aten = torch.ops.aten
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    mask32 = mask.float() if mask is not None and mask.dtype == bf16 else mask
    if mask32 is not None and mask32.dtype == torch.bool:  # (as SDPA hands a boolean mask to the kernel)
        mask32 = torch.zeros(mask32.shape).masked_fill_(~mask32, float("-inf"))
    causal = kwargs["is_causal"]
    want, logsumexp = aten._scaled_dot_product_flash_attention_for_cpu(q32, k32, v32, 0.0, causal, attn_mask=mask32)
    assert torch.equal(out, want.to(bf16))
    want_grads = aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad.float(), q32, k32, v32, out.float(), logsumexp, 0.0, causal, attn_mask=mask32
    )
    for got, expected in zip(grads, want_grads):
        assert torch.equal(got, expected.to(bf16))
    # and as close to the exact attention's as PyTorch's own bf16 kernel
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    mask64 = mask.double() if mask is not None and mask.dtype == bf16 else mask
    exact_out = F.scaled_dot_product_attention(*exact, attn_mask=mask64, is_causal=causal)
    exact_grads = torch.autograd.grad(exact_out, exact, grad.double())
    native = F.scaled_dot_product_attention(q, k, v, **kwargs)
    native_grads = torch.autograd.grad(native, (q, k, v), grad)
    for got, mine, theirs in zip(exact_grads, grads, native_grads):
        assert (mine.double() - got).abs().max() <= 1.5 * (theirs.double() - got).abs().max()
    assert (out.double() - exact_out).abs().max() <= 1.5 * (native.double() - exact_out).abs().max()


def model_and_batch():
    torch.manual_seed(0)
    layer = transformer_encoder(embed_dim=64, num_layers=2, num_heads=4, mlp_dim=128)
    x = torch.randn(3, 21, 64)
    return layer, x


def train_step(layer, x, emulate):
    layer.zero_grad(set_to_none=True)
    with bf16_products_region(emulate):
        with torch.autocast("cpu", bf16):
            out = layer(x).last_hidden_state
        loss = out.float().square().mean()
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}


def test_a_layers_train_step_under_autocast_matches_pytorchs_bf16_kernels_within_bf16_rounding():
    layer, x = model_and_batch()
    loss, grads = train_step(layer, x, emulate=True)
    native_loss, native_grads = train_step(layer, x, emulate=False)
    fp32_layer, _ = model_and_batch()
    fp32_layer.zero_grad()
    fp32_layer(x).last_hidden_state.square().mean().backward()
    assert loss == pytest.approx(float(native_loss), rel=2e-2)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32  # the parameters' gradients, as autocast gives them
        reference, native = fp32_layer.get_parameter(name).grad, native_grads[name]
        scale = reference.abs().max()
        # as far from fp32's gradients as PyTorch's bf16 kernels' are, within bf16's rounding
        assert (grad - reference).abs().max() <= max(2 * (native - reference).abs().max(), 2e-2 * scale)
    with torch.no_grad(), torch.autocast("cpu", bf16):  # inference too
        native_out = layer(x).last_hidden_state
        with bf16_products_in_fp32():
            out = layer(x).last_hidden_state
    assert out.dtype == native_out.dtype
    assert (out - native_out).abs().max() <= 5e-2 * native_out.abs().max()


@pytest.mark.parametrize("checkpointing", ["selective", "full"])
def test_activation_checkpointing_recomputes_in_the_region_to_the_same_gradients(checkpointing):
    """Selective checkpointing caches the matmuls' outputs through a dispatch mode of its own, full checkpointing
    recomputes the layer in the backward: either way, inside the region, the gradients are those of the run that
    keeps every activation."""
    layer, x = model_and_batch()
    loss, grads = train_step(layer, x, emulate=True)
    checkpointed, _ = model_and_batch()
    checkpointed.checkpoint_activations = checkpointing
    checkpointed_loss, checkpointed_grads = train_step(checkpointed, x, emulate=True)
    assert torch.equal(loss, checkpointed_loss)
    for name, grad in grads.items():
        assert torch.equal(checkpointed_grads[name], grad), name


def test_which_runs_emulate():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert emulates_bf16_products(cpu, "bf16") is not precision.NATIVE_CPU_BF16
    assert not emulates_bf16_products(cpu, "fp32")
    assert not emulates_bf16_products(cuda, "bf16")
    assert not emulates_bf16_products(cpu, "bf16", compiled=True)
