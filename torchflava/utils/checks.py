"""Argument checks shared across the library: one-line errors naming the argument, expected and given."""

import math
from typing import Callable

import torch
from torch import Tensor


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``.

    Args:
        name (str): the argument's name, for the message.
        value (object): what was given.
        minimum (int): the smallest value allowed.

    Returns:
        int: ``value``.

    Raises:
        TypeError: if ``value`` is not an int (bools are refused).
        ValueError: if it is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_probability(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as a float if it is a number in [0, 1] ((0, 1] without ``allow_zero``).

    Args:
        name (str): the argument's name, for the message.
        value (object): what was given.
        allow_zero (bool): whether 0 is allowed.

    Returns:
        float: ``value``.

    Raises:
        TypeError: if ``value`` is not a number (bools are refused).
        ValueError: if it is outside the range (or not finite).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and low_ok and value <= 1):
        raise ValueError(f"{name} must be in {'[' if allow_zero else '('}0, 1], got {value}")
    return float(value)


def check_positive_number(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a positive finite number (bools refused), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


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
