"""benchmarks/encoders.py: the live-memory figure beside peak RSS."""

from pathlib import Path
import sys

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
try:
    from encoders import live_peak_mib
finally:
    sys.path.remove(str(BENCHMARKS))

MIB = 2**20


def test_live_peak_is_the_most_memory_alive_together_after_any_op():
    if live_peak_mib(lambda: None) is None:
        pytest.skip("not glibc: no mallinfo2")
    x = torch.ones(4 * MIB // 4)  # 4 MiB held by the caller: not the call's

    def two_at_once():  # 16 + 8 MiB alive together, then 8 MiB freed and 16 more: 32 MiB at most
        a = torch.empty(16 * MIB // 4).fill_(1.0)
        b = torch.empty(8 * MIB // 4).fill_(2.0)
        del b
        c = a + 1.0
        return float(c[0] + x[0])

    def in_place():  # the same 16 MiB written twice: one buffer
        a = torch.empty(16 * MIB // 4).fill_(1.0)
        a.add_(1.0)
        return float(a[0])

    live_peak_mib(two_at_once)  # (a first call's lazy set-up is no part of the figure; the benchmark warms up too)
    assert 31.9 < live_peak_mib(two_at_once) < 33.0
    assert 15.9 < live_peak_mib(in_place) < 17.0
