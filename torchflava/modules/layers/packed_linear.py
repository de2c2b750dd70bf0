"""Frozen low-precision linear layers for inference: weights cast (and, on CPU, packed) once.

Under ``torch.autocast``, every call of an ``nn.Linear`` casts its float32 weight to the autocast
dtype again (PyTorch keeps such casts only outside ``torch.inference_mode``), and on CPU oneDNN
then reorders that weight into its blocked matmul layout: per call, work proportional to the
weights, not to the batch. :func:`pack_linears` does both once. The outputs are those of the same
model under ``torch.autocast(dtype=...)``: the inputs are cast to ``dtype`` and the same kernel
runs on the same rounded weights (the tests check equality to the bit).

Shapes: x (..., in_features) -> (..., out_features), in ``dtype``.
"""

import functools
from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.layers.linear import ONEDNN_LINEAR_AVAILABLE, dense_bias
from torchflava.utils.checks import check_module

PACKED_DTYPES = (torch.bfloat16,)


@functools.lru_cache(maxsize=None)
def onednn_packing_available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether this PyTorch build and CPU can run oneDNN linears on pre-packed ``dtype`` weights."""
    return (
        ONEDNN_LINEAR_AVAILABLE
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and (dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


@torch.library.custom_op("torchflava::packed_linear", mutates_args=())
def packed_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_features: int) -> Tensor:
    """oneDNN's product of ``x`` (..., in) in the weight's dtype and a packed ``weight``, as one opaque op that
    ``torch.compile`` calls as it is: inductor lowers ``mkldnn._linear_pointwise`` only on a constant weight (with
    ``torch._inductor.config.freezing``) and failed on a packed layer's otherwise ("weight must be a graph
    constant"); with freezing, its fusion of a following add took the weight for one it had packed itself and
    failed on any packed layer whose output is added to ("expected packed_weight_node.target to be
    mkldnn._reorder_linear_weight"), e.g. a residual. The same kernel on the same operands: the eager layer's
    values to the bit, frozen or not.

    Returns:
        Tensor: (..., out_features).
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@packed_linear.register_fake
def _packed_linear_shape(x: Tensor, weight: Tensor, bias: Optional[Tensor], out_features: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))  # (the packed weight's shape is oneDNN's blocked layout)


# oneDNN's packed weight has no storage to copy or pickle.
_NOT_COPYABLE = (
    "a PackedLinear (a model after pack_linears) cannot be copied or pickled: copy or save the model before "
    "packing it (its state_dict and checkpoint), then pack the copy"
)


class PackedLinear(nn.Module):
    """An inference-only copy of an ``nn.Linear`` whose weight is stored in ``dtype``.

    On CPU, when oneDNN supports it, the weight is also reordered once into oneDNN's matmul layout;
    elsewhere it is kept as a plain ``dtype`` tensor for ``F.linear``. The layer has no parameters
    and no gradients: build it from a trained ``nn.Linear`` with :meth:`from_linear` (or convert a
    whole model with :func:`pack_linears`) after the weights are final and the model is on its
    device.

    Args:
        weight (Tensor): (out_features, in_features), already in ``dtype``.
        bias (Optional[Tensor]): (out_features,) in ``dtype``, or None.
        pack (bool): reorder the weight for oneDNN (CPU tensors with a feature in and out only).

    Raises:
        ValueError: if ``weight`` is not 2-D, ``bias`` does not match it, or the dtypes differ.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], *, pack: bool) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
        if bias is not None and (bias.shape != weight.shape[:1] or bias.dtype != weight.dtype):
            raise ValueError(
                f"bias must be ({weight.shape[0]},) in {weight.dtype}, got {tuple(bias.shape)} in {bias.dtype}"
            )
        self.train(False)  # for inference only: .train() later is refused when it is called
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.packed = pack and weight.device.type == "cpu" and weight.numel() > 0  # (oneDNN has no empty product)
        # contiguous on both paths: oneDNN reads a strided bias as dense (wrong sums), and F.linear on a
        # (B, S, D) input adds a strided one after rounding the product to bf16 (two roundings, not one)
        self.bias = None if bias is None else dense_bias(bias.detach())
        # oneDNN's opaque blocked layout, or the plain (out_features, in_features) weight.
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach()) if self.packed else weight.detach()

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> "PackedLinear":
        """Cast (and pack, where supported) the weights of ``linear``.

        Args:
            linear (nn.Linear): the trained layer; it is not modified.
            dtype (torch.dtype): the compute dtype; ``torch.bfloat16``.

        Returns:
            PackedLinear: the frozen layer.

        Raises:
            TypeError: if ``linear`` is not an ``nn.Linear``.
            ValueError: if ``dtype`` is not supported.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        if dtype not in PACKED_DTYPES:
            raise ValueError(f"dtype must be one of {PACKED_DTYPES}, got {dtype}")
        weight = linear.weight.detach()
        pack = weight.device.type == "cpu" and onednn_packing_available(dtype)
        return cls(weight.to(dtype), None if linear.bias is None else linear.bias.detach().to(dtype), pack=pack)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x (Tensor): (..., in_features), any floating dtype (cast to ``dtype``).

        Returns:
            Tensor: (..., out_features) in ``dtype``.

        Raises:
            TypeError: if ``x`` is not a floating-point tensor.
            ValueError: if the last dimension of ``x`` is not ``in_features``.
            RuntimeError: if the layer is in training mode or ``x`` requires grad (it is for inference only).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must be (..., {self.in_features}), got shape {tuple(x.shape)}")
        if self.training:  # (.train() after pack_linears: dropout would run, and nothing could learn)
            raise RuntimeError("PackedLinear is for inference: a packed model cannot be trained (call .eval())")
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("PackedLinear is for inference: its input must not require grad")
        x = x.to(self.dtype)
        if self.packed and torch.compiler.is_compiling():
            return packed_linear(x, self.weight, self.bias, self.out_features)  # (see packed_linear)
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _apply(self, fn, recurse: bool = True) -> "PackedLinear":
        # ``.half()``, ``.double()``, ``.to(dtype or device)`` reach the layer here, but its weight is no
        # parameter or buffer: left as it was, the next norm failed inside torch ("mixed dtype (CPU)").
        # A probe in the weight's dtype and on its device says what the conversion would do.
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.weight.device))
        if probe.dtype != self.dtype or probe.device != self.weight.device:
            raise TypeError(
                f"a PackedLinear keeps its {self.dtype} weight on {self.weight.device}: convert or move the model "
                f"before pack_linears (or the unpacked original), got a conversion to {probe.dtype} on {probe.device}"
            )
        return super()._apply(fn, recurse)

    def __deepcopy__(self, memo: dict) -> "PackedLinear":
        raise TypeError(_NOT_COPYABLE)

    def __reduce_ex__(self, protocol: int):
        raise TypeError(_NOT_COPYABLE)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"dtype={self.dtype}, packed={self.packed}"
        )


def pack_linears(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` inside ``module`` by a :class:`PackedLinear`.

    For inference under ``torch.autocast(device, dtype)``: the model then computes exactly what it
    computed under autocast before, without casting and reordering every weight on every call.
    Everything that is not a linear layer (norms, embeddings, convolutions) is left as it is. The
    converted model cannot be trained and its ``state_dict`` no longer holds the linear weights:
    keep the original (or its checkpoint) for that. Move the model to its device first: converting
    it afterwards to another dtype or device (``.half()``, ``.to(...)``) is refused (a TypeError).
    ``torch.compile`` takes the packed model, with inductor's ``freezing`` or without (each packed layer one
    opaque op, :func:`packed_linear`).

    Args:
        module (nn.Module): the model, e.g. a ``FLAVAModel`` in eval mode.
        dtype (torch.dtype): the compute dtype of the linear layers; ``torch.bfloat16``.

    Returns:
        nn.Module: ``module`` itself, converted.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
        ValueError: if ``dtype`` is not supported or ``module`` is in training mode.
    """
    check_module("module", module)
    if dtype not in PACKED_DTYPES:
        raise ValueError(f"dtype must be one of {PACKED_DTYPES}, got {dtype}")
    if module.training:
        raise ValueError("module must be in eval mode (call .eval()): packed linear layers cannot be trained")
    if isinstance(module, nn.Linear):
        raise TypeError("module must contain the linear layers; convert a lone nn.Linear with PackedLinear.from_linear")
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear.from_linear(child, dtype))
    return module
