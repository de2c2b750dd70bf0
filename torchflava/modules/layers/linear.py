"""Linear layers whose CPU products run on oneDNN where it beats ``F.linear``: fp32 products on
CPUs where oneDNN beats PyTorch's default BLAS, and bf16 autocast inference with the bias fused.

``F.linear`` in fp32 on the CPU calls the BLAS PyTorch was built with (MKL in the official wheels);
in bf16 it already calls oneDNN. Which of the two is faster depends on the CPU (benchmarks/README.md,
"linear.py"). On a 2-core AMD EPYC with AVX-512, MKL's sgemm ran ViT-B's linear shapes at 120-170
GFLOP/s and oneDNN at 180-200; in training, forward and both backward products, oneDNN was 1.05-1.3x
faster (likely because MKL runs AVX2 code on AMD processors, while oneDNN uses AVX-512). On a
2-core AMD EPYC with AVX2 only, oneDNN was 0.6-0.9x MKL in training and 0.9-1.5x in inference,
shape by shape. So oneDNN is chosen by default only on AMD processors with AVX-512
(:func:`default_onednn_min_macs`); elsewhere
``ONEDNN_FP32_MIN_MACS`` is None and every product runs ``F.linear``, unless a user who measured
their machine sets the thresholds.

Where enabled, :func:`linear` sends an fp32 CPU product to oneDNN (forward and, in training, both
backward products) when its input and output widths are at least :data:`ONEDNN_FP32_MIN_WIDTH` and
it has at least :data:`ONEDNN_FP32_MIN_MACS` multiply-adds (oneDNN loses on narrow layers (width
128; in training also 256) and small products, where its per-call cost shows), and everything else
to ``F.linear``: other dtypes and devices, autocast (which casts to bf16 anyway), ``torch.compile``
(where inductor picks the kernel), ``torch.jit.trace`` and ``torch.func`` transforms (vmap, grad:
they need F.linear's batching and derivative rules). Both compute the same sums in fp32; the
results differ by rounding (~1e-7 relative).

Under the CPU's bf16 autocast with no autograd recording (inference), :func:`linear` casts the
operands to bf16 and runs oneDNN's linear with the bias added in the product's epilogue, where
autocast's ``F.linear`` writes the bias into the output and adds the product to it: the same values
to the bit, a pass less (:func:`autocast_fused_bias_wins` says where).
"""

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from torchflava.utils.checks import check_bool, check_int
from torchflava.utils.precision import NATIVE_CPU_BF16

# The smallest product (rows x in x out) and the smallest input and output width sent to oneDNN,
# without and with autograd recording, on the CPUs where oneDNN wins. Read off benchmarks/linear.py
# on a 2-core AMD EPYC with AVX-512.
ONEDNN_WINS_MIN_MACS: dict[str, int] = {"inference": 1 << 26, "training": 1 << 27}
ONEDNN_FP32_MIN_WIDTH: dict[str, int] = {"inference": 256, "training": 512}


def cpu_vendor() -> str:
    """The CPU's vendor string (``"AuthenticAMD"``, ``"GenuineIntel"``...), or "" where unknown (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def default_onednn_min_macs(vendor: str, capability: str) -> Optional[dict[str, int]]:
    """The default :data:`ONEDNN_FP32_MIN_MACS` for a CPU: oneDNN only where it was measured to win.

    Args:
        vendor (str): the CPU vendor, as :func:`cpu_vendor` gives it.
        capability (str): PyTorch's CPU capability (``torch.backends.cpu.get_cpu_capability()``:
            ``"AVX512"``, ``"AVX2"``...).

    Returns:
        Optional[dict[str, int]]: :data:`ONEDNN_WINS_MIN_MACS` for AMD processors with AVX-512, None
        (``F.linear`` for every product) for any other CPU.
    """
    if vendor == "AuthenticAMD" and capability.startswith("AVX512"):
        return dict(ONEDNN_WINS_MIN_MACS)
    return None


# None sends no product to oneDNN. Set it (e.g. to ONEDNN_WINS_MIN_MACS) to choose by hand.
ONEDNN_FP32_MIN_MACS: Optional[dict[str, int]] = default_onednn_min_macs(
    cpu_vendor(), torch.backends.cpu.get_cpu_capability()
)


def _check_thresholds(name: str, value: object) -> None:
    if not (
        isinstance(value, dict)
        and set(value) == {"inference", "training"}
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values())
    ):
        raise ValueError(f"{name} must be a dict of non-negative ints keyed inference and training, got {value!r}")


@contextmanager
def onednn_fp32_thresholds(
    min_macs: Optional[dict[str, int]], min_width: Optional[dict[str, int]] = None
) -> Iterator[None]:
    """Within the block, :func:`linear` uses these thresholds; the previous ones come back after it.

    For measuring a machine (benchmarks/linear.py) and for tests; to change them for good, set
    :data:`ONEDNN_FP32_MIN_MACS` and :data:`ONEDNN_FP32_MIN_WIDTH`.

    Args:
        min_macs (Optional[dict[str, int]]): smallest product, keyed ``"inference"`` and
            ``"training"``; None sends every product to ``F.linear``.
        min_width (Optional[dict[str, int]]): smallest input and output width, keyed the same;
            None keeps the current ones.

    Raises:
        ValueError: if either is not None or a dict of non-negative ints with exactly those keys.
    """
    global ONEDNN_FP32_MIN_MACS, ONEDNN_FP32_MIN_WIDTH
    if min_macs is not None:
        _check_thresholds("min_macs", min_macs)
    if min_width is not None:
        _check_thresholds("min_width", min_width)
    saved = ONEDNN_FP32_MIN_MACS, ONEDNN_FP32_MIN_WIDTH
    ONEDNN_FP32_MIN_MACS = None if min_macs is None else dict(min_macs)
    ONEDNN_FP32_MIN_WIDTH = dict(ONEDNN_FP32_MIN_WIDTH if min_width is None else min_width)
    try:
        yield
    finally:
        ONEDNN_FP32_MIN_MACS, ONEDNN_FP32_MIN_WIDTH = saved


_PLAIN = (Tensor, nn.Parameter)
# Whether this PyTorch build runs linears through oneDNN (also read by packed_linear.py).
ONEDNN_LINEAR_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_ONEDNN = ONEDNN_LINEAR_AVAILABLE and hasattr(torch.ops.aten, "mkldnn_linear_backward_input")


def _onednn_mm(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN: x (..., in), weight (out, in)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, dense_bias(bias), "none", [], "")


def dense_bias(bias: Optional[Tensor]) -> Optional[Tensor]:
    """``bias`` as oneDNN's linear must be given it: contiguous (it reads a bias as a dense vector
    whatever its strides, so a strided or expanded one, e.g. ``b[::2]``, gave wrong sums or read past
    its end). A copy where it is not contiguous already; None stays None."""
    return None if bias is None else bias.contiguous()


def _onednn_grad_input(grad_out: Tensor, weight: Tensor) -> Tensor:
    """``grad_out @ weight`` by oneDNN's backward-data primitive: grad_out (M, out), weight (out, in).

    It reads the weight in its (out, in) layout; ``_onednn_mm`` would need it transposed and copied
    (1.5-2x slower at 150-300 rows, no slower at ~1600; measured with the ViT-B shapes).
    """
    size = (grad_out.shape[0], weight.shape[1])
    return torch.ops.aten.mkldnn_linear_backward_input(size, grad_out.to_mkldnn(), weight).to_dense()


def onednn_linear_wins(x: Tensor, weight: Tensor, training: bool, bias: Optional[Tensor] = None) -> bool:
    """Whether :func:`linear` sends ``x @ weight.T`` to oneDNN (see the module's docstring).

    Args:
        x (Tensor): (..., in).
        weight (Tensor): (out, in).
        training (bool): whether autograd records the product (its backward runs on oneDNN too).
        bias (Optional[Tensor]): the bias added to it, if any.
    """
    mode = "training" if training else "inference"
    return (
        _ONEDNN
        and ONEDNN_FP32_MIN_MACS is not None
        and not torch.compiler.is_compiling()
        and torch._C._get_mkldnn_enabled()  # torch.backends.mkldnn.flags(enabled=False): the user's say
        and not torch.jit.is_tracing()  # a traced graph must hold portable ops
        and not torch._C._are_functorch_transforms_active()  # vmap, torch.func.grad...: F.linear's rules
        and not has_tangent(x, weight, bias)  # forward-mode AD: oneDNN's op has no jvp rule
        and not torch.is_autocast_enabled("cpu")
        and type(x) in _PLAIN  # not a subclass (DTensor, fake or functorch tensors...)
        and type(weight) in _PLAIN
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dim() >= 2
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1]
        and x.numel() > 0  # (oneDNN has no empty product; and no division by zero features below)
        and weight.numel() > 0
        and min(weight.shape) >= ONEDNN_FP32_MIN_WIDTH[mode]
        and x.numel() // weight.shape[1] * weight.numel() >= ONEDNN_FP32_MIN_MACS[mode]
    )


# Under the CPU's bf16 autocast, with no autograd recording, :func:`linear` may run oneDNN's linear
# on bf16 copies of the operands, the bias added in the product's epilogue, where autocast's F.linear
# writes the bias into the output first and adds the product to it (a pass over the output more):
# the same values to the bit (tests); CLIP ViT-B/16's bf16 image encoder 1.02-1.09x faster
# (benchmarks/README.md). False: F.linear for every such product.
AUTOCAST_FUSED_BIAS = True
# Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX): the fused-bias path here, and
# attention's bf16 score product (attention.BF16_SCORE_PRODUCTS), need it.
ONEDNN_BF16 = ONEDNN_LINEAR_AVAILABLE and NATIVE_CPU_BF16
_AUTOCAST_BF16 = (torch.float32, torch.bfloat16)  # the dtypes autocast casts to bf16 that this path takes


def autocast_fused_bias_wins(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether :func:`linear` sends a product under CPU bf16 autocast, with no autograd recording,
    to oneDNN's linear with the bias fused (see :data:`AUTOCAST_FUSED_BIAS`).

    Only products with at least twice as many rows as input features: it casts the weight on every
    call, where autocast keeps its cast of a float32 leaf that requires grad for the rest of its
    region, and below that the cast costs more than the pass it saves (fc1 of ViT-B/16 at 1576 rows
    was even); in place, text encoders of 616 rows with frozen weights (no cast kept) ran 5-7%
    slower with it (benchmarks/README.md).

    Args:
        x (Tensor): (..., in).
        weight (Tensor): (out, in).
        bias (Optional[Tensor]): (out,) or None.
    """
    if not (AUTOCAST_FUSED_BIAS and ONEDNN_BF16 and torch.is_autocast_enabled("cpu")):
        return False
    if x.dim() < 2 or weight.dim() != 2 or x.shape[-1] != weight.shape[1] or x.numel() == 0:
        return False
    if x.dim() > 2 and not x.is_contiguous():  # F.linear: a product, then the bias added (two roundings)
        return False
    if x.numel() // x.shape[-1] < 2 * weight.shape[1]:
        return False
    return (
        torch.get_autocast_dtype("cpu") == torch.bfloat16
        and all(
            t is None or (type(t) in _PLAIN and t.device.type == "cpu" and t.dtype in _AUTOCAST_BF16)
            for t in (x, weight, bias)
        )
        and (bias is None or bias.shape == weight.shape[:1])
        # a strided bf16 bias (autocast casts no bf16 tensor): F.linear adds it after the product
        # (two roundings) and oneDNN would read it as dense; an fp32 one is cast to a dense copy
        and (bias is None or bias.dtype != torch.bfloat16 or bias.is_contiguous())
        and not torch.compiler.is_compiling()
        and torch._C._get_mkldnn_enabled()
        and not torch.jit.is_tracing()
        and not is_in_torch_dispatch_mode()  # make_fx, FlopCounterMode...: they should see F.linear's ops
        and not torch._C._are_functorch_transforms_active()
        and not has_tangent(x, weight, bias)
    )


def has_tangent(*tensors: Optional[Tensor]) -> bool:
    """Whether forward-mode AD is on and any of ``tensors`` (None skipped) carries a tangent (a dual tensor)."""
    return fwAD._current_level >= 0 and any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


class _OneDNNLinear(torch.autograd.Function):
    """oneDNN's product forward and backward; saves what ``F.linear``'s autograd saves (x, weight).

    A backward that records a graph (``create_graph=True``: gradient penalties, Hessian-vector products)
    runs the same products with differentiable ops, so that the gradient can itself be differentiated, as
    through ``F.linear``'s.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        x, weight = ctx.saved_tensors
        grad_out2 = grad_out.reshape(-1, grad_out.shape[-1])  # (M, out)
        grad_x = grad_weight = grad_bias = None
        # (oneDNN's ops have no derivatives: a backward that records a graph, create_graph=True, runs torch's)
        recorded = torch.is_grad_enabled()
        if ctx.needs_input_grad[0]:  # (M, out) @ (out, in)
            product = grad_out2 @ weight if recorded else _onednn_grad_input(grad_out2, weight)
            grad_x = product.view(x.shape)
        if ctx.needs_input_grad[1]:  # (out, M) @ (M, in)
            rows = x.reshape(-1, x.shape[-1])
            grad_weight = grad_out2.t() @ rows if recorded else _onednn_mm(grad_out2.t(), rows.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out2.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(x, weight, bias)``, on oneDNN for large fp32 CPU products (see the module's docstring).

    Args:
        x (Tensor): (..., in).
        weight (Tensor): (out, in).
        bias (Optional[Tensor]): (out,).

    Returns:
        Tensor: (..., out).
    """
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    bias_fits = bias is None or (bias.dtype == torch.float32 and bias.device == x.device and type(bias) in _PLAIN)
    if not training and autocast_fused_bias_wins(x, weight, bias):
        bf16 = torch.bfloat16
        bias = None if bias is None else bias.to(bf16)
        return torch.ops.mkldnn._linear_pointwise(x.to(bf16), weight.to(bf16), bias, "none", [], "")
    if not (bias_fits and onednn_linear_wins(x, weight, training, bias)):
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias) if training else _onednn_mm(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, initialisation and state dict) whose product is :func:`linear`.

    Raises:
        TypeError: if ``in_features`` or ``out_features`` is not an int, or ``bias`` not a bool.
        ValueError: if either is negative.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        check_int("in_features", in_features, 0)
        check_int("out_features", out_features, 0)
        check_bool("bias", bias)  # ("no" is truthy: a bias was made)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
