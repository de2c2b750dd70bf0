"""The order in which interleaved benchmarks run their implementations, round by round."""

from typing import Sequence, TypeVar

T = TypeVar("T")


def round_order(names: Sequence[T], round_index: int) -> list[T]:
    """``names`` rotated by ``round_index``: A B C, then B C A, then C A B, ...

    Whichever step runs first in a round was measured up to ~15% slower than in other places (the
    FLAVA-full pretraining step, 2-core AMD EPYC, 2026-12-03), so no implementation keeps that place.
    """
    names = list(names)
    shift = round_index % len(names) if names else 0
    return names[shift:] + names[:shift]
