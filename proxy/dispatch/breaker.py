"""A circuit breaker per deployment: stop sending where calls keep failing, probe after a cool-down."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # one probe is out; its outcome closes or re-opens the breaker


class CircuitBreaker:
    def __init__(self, failures_to_open: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures_to_open
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self.state = BreakerState.CLOSED

    def can_try(self) -> bool:
        """Whether a call may go now, without taking the half-open probe."""
        if self.state is BreakerState.OPEN:
            return self._clock() - self._opened_at >= self._cooldown
        return self.state is BreakerState.CLOSED

    def acquire(self) -> bool:
        """Take the right to call: always when closed; once per cool-down when open (the probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self.state = BreakerState.CLOSED

    def failed(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()

    def released(self) -> None:
        """A probe that ended with no verdict on the deployment (cancelled, or the client's own 400)."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN  # the next caller may probe at once: the cool-down has passed

    def retry_at(self) -> float:
        """When a call may next go (on this breaker's clock): now when closed."""
        if self.state is BreakerState.OPEN:
            return self._opened_at + self._cooldown
        return self._clock() + (0.05 if self.state is BreakerState.HALF_OPEN else 0.0)

    @property
    def is_open(self) -> bool:
        return self.state is not BreakerState.CLOSED
