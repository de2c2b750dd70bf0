"""benchmarks/interleave.py: the order of the implementations in each round of an interleaved benchmark."""

from pathlib import Path
import sys

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
try:
    from interleave import round_order
finally:
    sys.path.remove(str(BENCHMARKS))


def test_each_implementation_runs_first_once_every_len_rounds():
    names = ["ours", "hf", "tmm"]
    rounds = [round_order(names, r) for r in range(6)]
    assert rounds[:3] == [["ours", "hf", "tmm"], ["hf", "tmm", "ours"], ["tmm", "ours", "hf"]]
    assert rounds[3:] == rounds[:3]
    assert round_order({"a": 1, "b": 2}, 1) == ["b", "a"]  # a dict gives its keys
    assert round_order([], 3) == []
