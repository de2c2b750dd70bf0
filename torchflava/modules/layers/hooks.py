"""Whether a module's call may be bypassed: no hook, its own or a global one, would miss it."""

from torch import nn
from torch.nn.modules import module as _torch_module


def hooked(*modules: nn.Module) -> bool:
    """Whether any forward or backward hook (registered on one of ``modules`` or globally for every
    module) would see calls to ``modules``: code that computes what they compute without calling
    them must not stand in for them then.

    Args:
        *modules (nn.Module): the modules a fused computation would bypass.

    Returns:
        bool: True if a hook of any kind would be skipped.
    """
    if (
        _torch_module._global_forward_hooks
        or _torch_module._global_forward_pre_hooks
        or _torch_module._global_backward_hooks
        or _torch_module._global_backward_pre_hooks
    ):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in modules)
