"""keep_freed_memory: glibc malloc keeps what the process frees (no page faults to get it back)."""

import json
import subprocess
import sys

import pytest

from torchflava.utils import memory
from torchflava.utils.memory import MAX_MMAP_THRESHOLD, keep_freed_memory

# A child allocates and touches 24 blocks of 8 MiB, frees them all and reports how much of that its
# resident memory still holds: glibc, left to itself, trims the heap's free top and unmaps big blocks.
CHILD = """
import json, sys
from pathlib import Path
mode, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode != "default":  # (glibc's own behaviour needs no import of torch, which is most of a child's time)
    from torchflava.utils.memory import keep_freed_memory
kept = None if mode == "default" else keep_freed_memory(map_large_blocks=mode == "keep-mapping")
def rss():
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS")) / 1024
before = rss()
blocks = [bytearray(size << 20) for _ in range(count)]
for block in blocks:
    block[::4096] = b"\\x01" * len(block[::4096])  # touch every page
held = rss()
del blocks
print(json.dumps({"kept": kept, "held": held - before, "after_free": rss() - before}))
"""


def child(mode: str, size_mib: int = 8, count: int = 24) -> dict:
    args = [sys.executable, "-c", CHILD, mode, str(size_mib), str(count)]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout)


@pytest.mark.skipif(memory._mallopt() is None or not sys.platform.startswith("linux"), reason="needs glibc")
def test_freed_memory_stays_in_the_process_only_when_asked():
    default, keep = child("default"), child("keep")
    assert keep["kept"] is True
    assert default["held"] > 150 and keep["held"] > 150  # 192 MiB touched
    assert keep["after_free"] > 150  # still resident: the next allocations reuse it without faults
    assert default["after_free"] < 50  # glibc's own thresholds gave it back


@pytest.mark.skipif(memory._mallopt() is None or not sys.platform.startswith("linux"), reason="needs glibc")
def test_blocks_above_the_mmap_threshold_come_from_the_heap_unless_mapping_is_asked_for():
    """Blocks of 40 MiB (above glibc's largest mmap threshold, 32 MiB) are mapped on their own and
    unmapped when freed, by default and with ``map_large_blocks``; kept otherwise."""
    default, keep, mapping = (child(mode, size_mib=40, count=5) for mode in ("default", "keep", "keep-mapping"))
    assert keep["kept"] is True and mapping["kept"] is True
    assert all(result["held"] > 150 for result in (default, keep, mapping))  # 200 MiB touched
    assert keep["after_free"] > 150
    assert default["after_free"] < 50 and mapping["after_free"] < 50


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="mmap_threshold must be at most 33554432"):
        keep_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD + 1)
    with pytest.raises(ValueError, match="mmap_threshold must be >= 1, got 0"):
        keep_freed_memory(mmap_threshold=0)
    with pytest.raises(TypeError, match="trim_threshold must be an int, got float"):
        keep_freed_memory(trim_threshold=1e9)
    with pytest.raises(ValueError, match="trim_threshold must be below 2\\*\\*31"):
        keep_freed_memory(trim_threshold=1 << 31)
    with pytest.raises(TypeError, match="map_large_blocks must be a bool, got int"):
        keep_freed_memory(map_large_blocks=1)


def test_without_glibc_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(memory, "_mallopt", lambda: None)
    assert keep_freed_memory() is False
