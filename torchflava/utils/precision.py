"""bf16 products as fp32 GEMMs, on CPUs for which oneDNN has no bf16 kernels.

On a CPU without AVX-512 (AVX2 only), PyTorch runs bf16 matrix products on a reference path: on a 2-core
AMD EPYC with AVX2, ``F.linear`` at ViT-B's qkv shape ran at 0.016 TFLOP/s in bf16 against 0.14 in fp32,
and a CLIP ViT-B/16 image-tower train step under bf16 autocast at batch 4 took 230 s against 3.9 s in fp32
(benchmarks/README.md). Yet a product of bf16 numbers is exact in fp32: a bf16 GEMM that accumulates in
fp32 and rounds its result to bf16 once (what oneDNN's bf16 kernels compute) is an fp32 GEMM of the
operands made fp32, its result rounded to bf16.

:func:`bf16_products_in_fp32` is a region in which every CPU matrix product whose tensor operands are
all bf16 (``mm``, ``addmm``, ``bmm``, ``baddbmm`` and their ``out=`` forms: ``nn.Linear``, ``matmul``,
``@``) and CPU flash attention on bf16 queries, keys and values (``F.scaled_dot_product_attention``,
forward and backward) run that way: operands cast to fp32, PyTorch's fp32 kernel, results cast back to
bf16. Dtypes, shapes and what autograd saves (the bf16 operands) are what the bf16 kernels give; the
values are those of the fp32 sums rounded once (flash attention's bf16 kernel also rounds its softmax's
probabilities to bf16 before their product with the values: here they stay fp32). Anything else —
other ops, dtypes or devices, tensor subclasses, operands of mixed dtypes (refused by the op as without
the region) — runs as it would without it. It works below autograd (a ``TorchDispatchMode``), so a
backward run inside the region computes its products the same way; under ``torch.inference_mode``, where
``linear``, ``matmul``, ``einsum`` and ``scaled_dot_product_attention`` reach it whole, it runs their
decompositions inside it.

The training loop opens the region around each step's forwards and backwards where ``training.precision``
is bf16 on such a CPU (:func:`emulates_bf16_products`).
"""

from contextlib import nullcontext
from typing import ContextManager

import torch
from torch import Tensor, nn

# Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16, AMX; or AVX-512 through conversions): where it
# does, PyTorch's bf16 products are fast and nothing here is needed.
NATIVE_CPU_BF16 = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def emulates_bf16_products(device: torch.device, precision: str, compiled: bool = False) -> bool:
    """Whether a run on ``device`` under ``precision`` (``"bf16"`` or ``"fp32"``) computes its bf16 products
    in fp32 (:func:`bf16_products_in_fp32`): bf16 on a CPU without oneDNN's bf16 kernels, eager (a compiled
    model's products are inductor's choice)."""
    return precision == "bf16" and device.type == "cpu" and not NATIVE_CPU_BF16 and not compiled


def bf16_products_region(enabled: bool) -> ContextManager[None]:
    """:func:`bf16_products_in_fp32` where ``enabled``, else a region that changes nothing."""
    return bf16_products_in_fp32() if enabled else nullcontext()


def bf16_products_in_fp32() -> ContextManager[None]:
    """A region in which CPU bf16 matrix products and flash attention compute in fp32 (see the module's doc)."""
    return _mode()()


_MODE = None


def _mode():
    """The dispatch mode's class, defined at first use: ``torch.utils._python_dispatch`` is imported only by a
    run that needs it."""
    global _MODE
    if _MODE is not None:
        return _MODE
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    products = {
        aten.mm.default,
        aten.mm.out,
        aten.addmm.default,
        aten.addmm.out,
        aten.bmm.default,
        aten.bmm.out,
        aten.baddbmm.default,
        aten.baddbmm.out,
    }
    # Composite ops, which reach the mode whole under torch.inference_mode (autograd's keys off): their
    # decompositions are run with the mode on, so that the products they make come here
    composites = {
        aten.linear.default,
        aten.matmul.default,
        aten.scaled_dot_product_attention.default,
        aten.einsum.default,
    }
    attention = aten._scaled_dot_product_flash_attention_for_cpu.default
    attention_backward = aten._scaled_dot_product_flash_attention_for_cpu_backward.default

    class Bf16ProductsInFp32(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in composites and any(
                isinstance(a, Tensor) and a.dtype == torch.bfloat16 and a.device.type == "cpu" for a in args
            ):
                with self:
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            elif func in products:
                out = kwargs.get("out")
                operands = [a for a in args if isinstance(a, Tensor)]
                if _all_plain_cpu_bf16(operands + ([out] if out is not None else [])):
                    inputs = {k: v for k, v in kwargs.items() if k != "out"}
                    product = func.overloadpacket.default(*_fp32(args), **inputs).to(torch.bfloat16)
                    return product if out is None else out.copy_(product)
            elif func is attention or func is attention_backward:
                mask = kwargs.get("attn_mask")
                operands = [a for a in args if isinstance(a, Tensor)]
                if func is attention_backward:  # (grad_out, q, k, v, out, logsumexp: fp32, ...)
                    operands = operands[:5]
                if _all_plain_cpu_bf16(operands) and (mask is None or _all_plain_cpu_bf16([mask])):
                    results = func(*_fp32(args), **{k: _fp32([v])[0] for k, v in kwargs.items()})
                    if func is attention:  # (output, logsumexp: fp32 on either path)
                        return results[0].to(torch.bfloat16), results[1]
                    return tuple(r.to(torch.bfloat16) for r in results)
            return func(*args, **kwargs)

    _MODE = Bf16ProductsInFp32
    return _MODE


def _all_plain_cpu_bf16(tensors: list) -> bool:
    return bool(tensors) and all(
        type(t) in (Tensor, nn.Parameter) and t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in tensors
    )


def _fp32(values) -> list:
    """``values`` with each bf16 tensor cast to fp32 (the others as they are)."""
    return [v.float() if isinstance(v, Tensor) and v.dtype == torch.bfloat16 else v for v in values]
