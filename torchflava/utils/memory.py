"""Keep the memory a CPU process frees for reuse, rather than handing it back to the OS each time.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc's returns a freed block to the OS
when it was mapped on its own (blocks above ``M_MMAP_THRESHOLD``) or when the free space at the top
of the heap exceeds ``M_TRIM_THRESHOLD``; both thresholds adapt to the block sizes seen, but a
forward pass that frees tens of MiB of activations still gives pages back that the next layer or
step must fault in again, zero-filled, one 4 KiB page at a time. Measured on a 2-core AMD EPYC
(benchmarks/README.md, "Memory the process keeps"): CLIP ViT-B/16 image inference at batch 8 took
86,796 page faults a batch, 0 with this, and ran 8-10% faster; a ViT-B/16 train step 55-71
thousand against 0.3-9 thousand (~1-2% of the step); peak RSS 3-13 MiB higher.

:func:`keep_freed_memory` fixes both thresholds (``mallopt``) for the whole process, and serves
blocks above the mmap threshold from the heap too (no block mapped on its own). It is what the
training loop does by default (``training.keep_freed_memory``); it is a process-wide setting, so a
library call never does it behind a user's back. Elsewhere than glibc (macOS, musl) it does nothing
and says so by returning False.
"""

import ctypes
from typing import Optional

from torchflava.utils.checks import check_int

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536  # glibc's default count of blocks mapped at once
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, 32 MiB on 64-bit systems
MAX_MMAP_THRESHOLD = 32 << 20


def _mallopt() -> Optional[object]:
    """glibc's ``mallopt``, or None where the C library has none (not glibc).

    Looked up among the symbols the process already has loaded (``CDLL(None)``): no search for the
    library file, which ``ctypes.util.find_library`` may do by running ``ldconfig`` or a compiler.
    """
    try:
        return getattr(ctypes.CDLL(None), "mallopt", None)
    except OSError:
        return None


def keep_freed_memory(
    mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 1 << 30, *, map_large_blocks: bool = False
) -> bool:
    """Fix glibc malloc's thresholds for this process: blocks come from the heap (and go back to it
    when freed), and the heap is trimmed only when more than ``trim_threshold`` bytes at its top are
    free. Blocks above ``mmap_threshold`` too, unless ``map_large_blocks``: glibc otherwise maps each
    of them on its own, unmaps it when freed and zero-fills it again, page by page, when the next one
    is allocated. FLAVA-full's bf16 pretraining step allocates and frees three 89 MiB gradients of
    vocabulary-sized weights every step: with them from the heap, 2.8 thousand page faults a step
    against 74 thousand and the step 2-5% faster, for peak RSS 60-135 MiB higher (benchmarks/README.md).

    Args:
        mmap_threshold (int): with ``map_large_blocks``, the largest block served from the heap, in
            [1, 32 MiB] (glibc's limit).
        trim_threshold (int): free bytes at the heap's top kept before trimming, >= 1.
        map_large_blocks (bool): map blocks above ``mmap_threshold`` on their own (glibc's way).

    Returns:
        bool: True when all were set; False where the C library is not glibc (nothing changed).

    Raises:
        TypeError: if a threshold is not an int, or ``map_large_blocks`` not a bool.
        ValueError: if a threshold is out of range.
    """
    check_int("mmap_threshold", mmap_threshold, 1)
    check_int("trim_threshold", trim_threshold, 1)
    if mmap_threshold > MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be at most {MAX_MMAP_THRESHOLD} (glibc's limit), got {mmap_threshold}")
    if trim_threshold >= 1 << 31:
        raise ValueError(f"trim_threshold must be below 2**31 (mallopt takes a C int), got {trim_threshold}")
    if not isinstance(map_large_blocks, bool):
        raise TypeError(f"map_large_blocks must be a bool, got {type(map_large_blocks).__name__}")
    mallopt = _mallopt()
    if mallopt is None:
        return False
    settings = [(_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold)]
    settings.append((_M_MMAP_MAX, _DEFAULT_MMAP_MAX if map_large_blocks else 0))
    return all(bool(mallopt(option, value)) for option, value in settings)
