"""proxy/runtime.py: the allocator keeps the buffers a large answer cycles through, unless the operator set
its thresholds; measured in a process of its own (the settings are the whole process's)."""

from __future__ import annotations

import os
import subprocess
import sys

from testkit.servers import ROOT

# 16 MB in blocks of a socket read's size, every page written, freed, three times over: the page faults of
# the third, once the allocator has settled (zero when the heap keeps what was freed).
CYCLES = """
import resource, sys
from proxy import runtime
applied = runtime.keep_large_buffers() if sys.argv[1] == "tune" else None
def cycle():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [bytearray(256 << 10) for _ in range(64)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del blocks
    return faults
cycle(), cycle()
print(applied, cycle())
"""


def third_cycle(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], cwd=ROOT, env={**os.environ, **(env or {})},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


def test_freed_buffers_are_kept_for_the_next_request() -> None:
    applied, faults = third_cycle("tune")
    assert applied == "True" and faults < 64  # a page or so per block at most
    _, untuned = third_cycle("plain")
    assert untuned > 1000  # glibc as it comes gives the 16 MB back and faults it in again


def test_the_operators_own_thresholds_are_left_alone() -> None:
    applied, _ = third_cycle("tune", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert applied == "False"
