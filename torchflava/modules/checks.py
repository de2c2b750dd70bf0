"""Checks of tensor values that also hold inside ``torch.compile`` graphs."""

from typing import Callable

import torch
from torch import Tensor


def require(ok: Tensor, message: Callable[[], str], compiled_message: str) -> None:
    """Raise ``ValueError(message())`` unless the 0-dim bool tensor ``ok`` is True.

    In eager mode the check reads ``ok`` and builds the full message (which may inspect the
    offending values). While ``torch.compile`` traces, reading a value would break the graph, so
    the check becomes an in-graph assertion that raises ``RuntimeError(compiled_message)`` when
    the compiled code runs on bad values: the check is kept, without a graph break.

    Args:
        ok (Tensor): 0-dim bool tensor, True when the values are valid.
        message (Callable[[], str]): the eager error message, built only on failure.
        compiled_message (str): the message of the compiled assertion (static).
    """
    if torch.compiler.is_compiling():
        torch._assert_async(ok, compiled_message)
    elif not bool(ok):
        raise ValueError(message())
