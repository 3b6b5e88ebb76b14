"""The serving process's own settings of Python's collector and of the C allocator, applied once at start-up."""

from __future__ import annotations

import ctypes
import gc
import os

# Allocations between two collections of the youngest generation (Python's default: 700). Each collection
# walks what is alive at that moment and moves it to an older generation, to be walked again there; under
# load much of it is the state of requests still in flight, gone soon after. Collecting 14 times less often
# took 5 % off the CPU per request at 32 clients (bench/ab.py, 8 rounds, each lower) and nothing off one at a
# time; 50,000 did no better. Cyclic garbage waits a little longer.
GC_YOUNG_THRESHOLD = 10_000

# glibc's malloc serves a block of at least M_MMAP_THRESHOLD bytes with a fresh mmap, and gives the heap's
# free top back to the kernel past M_TRIM_THRESHOLD; either way the next request's buffers fault in fresh
# pages. Both move with what the process frees, and a large answer read and written in pieces (256 KB
# socket reads, 1 MB rendered pieces, the 12 MB array of 2048 x 1536 rows) left them low: 5,300 page faults
# per such request, against 10 with these. Kept: up to 64 MB of free heap, which a busy gateway reuses.
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the value it would pick itself
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune() -> None:
    """What start-up built lives as long as the process: out of the collector's sight, a full collection
    no longer walks it again and again under load."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    keep_large_buffers()


def keep_large_buffers() -> bool:
    """Set glibc's two thresholds; False where they are the operator's (set in the environment) or there is
    no glibc `mallopt` (musl's does nothing, macOS has none)."""
    if any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
