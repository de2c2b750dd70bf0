"""Argument checks shared across the library: one-line errors naming the argument, expected and given."""

import math


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
