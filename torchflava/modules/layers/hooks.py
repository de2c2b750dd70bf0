"""Whether a module's call may be bypassed or its tensors reused: no hook, its own or a global one,
would miss the call or see a tensor change after it, and no saved-tensors hook decides what is kept."""

import torch
from torch import nn
from torch.nn.modules import module as _torch_module


def hooked(*modules: nn.Module, backward: bool = True) -> bool:
    """Whether a forward hook (and, with ``backward``, a backward hook), registered on one of
    ``modules`` or globally for every module, would see calls to ``modules``: code that computes
    what they compute without calling them, or overwrites what they returned, must not then.

    Args:
        *modules (nn.Module): the modules a fused computation would bypass.
        backward (bool): count backward hooks too (False: forward and forward-pre hooks only).

    Returns:
        bool: True if such a hook is registered.
    """
    kinds = ("_forward_hooks", "_forward_pre_hooks") + (("_backward_hooks", "_backward_pre_hooks") if backward else ())
    if any(getattr(_torch_module, "_global" + kind) for kind in kinds):
        return True
    return any(getattr(m, kind) for m in modules for kind in kinds)


def saved_tensors_hooks_active() -> bool:
    """Whether a ``saved_tensors_hooks`` context (activation checkpointing's, an offloader's) is
    active, which then decides what autograd keeps; True where this PyTorch cannot say."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None
