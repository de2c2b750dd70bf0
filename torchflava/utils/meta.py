"""Build a module on the meta device (shapes only, no memory) without its initialisers' value fills.

``with torch.device("meta"): build()`` still calls every ``reset_parameters``; on meta tensors
``normal_``, ``erfinv_``, ``clamp_`` and ``exponential_`` run PyTorch's Python reference kernels, whose
first call imports ``torch._dynamo`` (~1 s of a command's start on 2 cores, for a check that reads
shapes). :func:`meta_device` skips those in-place fills on meta tensors: they change no shape, dtype
or device, so what is built has the shapes, dtypes and module structure the plain context gives.
"""

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# The value fills initialisers use (nn.init's normal_ and trunc_normal_ as they are called, the tensor
# methods they and others call), skipped on meta tensors: they change no shape, dtype or device.
# nn.init's functions that check shapes (xavier_*, kaiming_*) run, their fills skipped or harmless.
_FILLS = frozenset(
    {
        nn.init.normal_,
        nn.init.trunc_normal_,
        nn.init.uniform_,
        Tensor.normal_,
        Tensor.uniform_,
        Tensor.erfinv_,
        Tensor.clamp_,
        Tensor.clamp_min_,
        Tensor.clamp_max_,
        Tensor.exponential_,
        Tensor.log_normal_,
        Tensor.cauchy_,
        Tensor.geometric_,
        Tensor.random_,
    }
)


class _SkipFillsOnMeta(TorchFunctionMode):
    """At the Python entry point: a mode handling a call is off for the calls inside it, so nn.init's
    functions are caught as called, not only the tensor methods they call. (A dispatch mode would see
    every aten op, but entering one imports torch._dynamo itself.)"""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")
        if func in _FILLS and isinstance(tensor, Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


@contextmanager
def meta_device() -> Iterator[None]:
    """Inside the block, modules and tensors are created on the meta device, as under
    ``torch.device("meta")``, and the value fills of their initialisers are skipped on meta tensors (a
    tensor put on another device explicitly is filled as usual)."""
    with torch.device("meta"), _SkipFillsOnMeta():
        yield
