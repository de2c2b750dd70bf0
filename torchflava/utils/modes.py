"""Run a module in eval mode for a while, giving each of its submodules its own mode back."""

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards each of its modules has the mode it had (a
    model evaluated during training goes on training with dropout on; a frozen submodule left in eval
    mode stays so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
