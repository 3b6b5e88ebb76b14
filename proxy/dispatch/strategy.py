"""Which deployment of several takes the next call: weighted round-robin, least in flight, or lowest latency."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Stats(Protocol):
    @property
    def weight(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    @property
    def latency(self) -> float | None: ...  # EWMA of recent successful calls, None before the first


T = TypeVar("T", bound=Stats)


class WeightedRoundRobin:
    """Smooth weighted round-robin (as nginx does it): spreads a weight-3/1 pair as a a b a, not a a a b."""

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def __call__(self, candidates: Sequence[T]) -> T:
        weighted = [c for c in candidates if c.weight > 0] or list(candidates)
        total = sum(max(c.weight, 1) for c in weighted)
        best = None
        for candidate in weighted:
            key = id(candidate)
            self._current[key] = self._current.get(key, 0) + max(candidate.weight, 1)
            if best is None or self._current[key] > self._current[id(best)]:
                best = candidate
        assert best is not None
        self._current[id(best)] -= total
        return best


def least_inflight(candidates: Sequence[T]) -> T:
    return min(candidates, key=lambda c: (c.inflight, -c.weight))


def lowest_latency(candidates: Sequence[T]) -> T:
    # Untried deployments first, so each gets measured; then the lowest EWMA.
    return min(candidates, key=lambda c: (c.latency is not None, c.latency or 0.0, c.inflight))


Strategy = Callable[[Sequence[T]], T]


def make_strategy(name: str) -> Callable[[Sequence[T]], T]:
    strategies: dict[str, Callable[[Sequence[T]], T]] = {
        "weighted": WeightedRoundRobin(), "least_inflight": least_inflight, "latency": lowest_latency,
    }
    return strategies[name]
