"""Polling for a condition another process or thread brings about."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], bool], timeout: float = 60, last: Callable[[], object] | None = None) -> None:
    """`last`: what to show if the condition never holds (the last state seen)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"the condition never held; last seen: {last() if last else '-'}"
        time.sleep(0.1)
