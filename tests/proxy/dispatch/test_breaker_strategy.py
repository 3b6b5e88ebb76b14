"""The breaker's states and the three choice strategies, on their own."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from proxy.dispatch.breaker import BreakerState, CircuitBreaker
from proxy.dispatch.strategy import WeightedRoundRobin, least_inflight, lowest_latency, make_strategy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_repeated_failures_probes_once_and_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=3, cooldown=10, clock=clock)
    for _ in range(2):
        breaker.failed()
    assert breaker.acquire() and breaker.state is BreakerState.CLOSED
    breaker.failed()
    assert breaker.state is BreakerState.OPEN and not breaker.can_try() and not breaker.acquire()
    assert breaker.retry_at() == 110.0
    clock.now = 110.0
    assert breaker.can_try()
    assert breaker.acquire() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.acquire()  # one probe at a time
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.acquire()


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=1, cooldown=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.acquire()
    breaker.failed()
    assert breaker.state is BreakerState.OPEN and breaker.retry_at() == clock.now + 5


def test_a_probe_without_verdict_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=1, cooldown=5, clock=clock)
    breaker.failed()
    clock.now += 5
    assert breaker.acquire()
    breaker.released()
    assert breaker.acquire()


@dataclass
class Node:
    name: str
    weight: int = 1
    inflight: int = 0
    latency: float | None = None


def test_weighted_round_robin_is_smooth_and_proportional() -> None:
    a, b, c = Node("a", 3), Node("b", 1), Node("c", 0)
    choose = WeightedRoundRobin()
    picks = [choose([a, b, c]).name for _ in range(8)]
    assert picks == ["a", "a", "b", "a"] * 2
    assert "c" not in picks  # weight 0: only when nothing else is left
    assert choose([c]).name == "c"


def test_least_inflight_and_lowest_latency() -> None:
    busy, idle = Node("busy", inflight=3), Node("idle", inflight=1)
    assert least_inflight([busy, idle]).name == "idle"
    fast, slow, new = Node("fast", latency=0.01), Node("slow", latency=0.5), Node("new")
    assert lowest_latency([fast, slow, new]).name == "new"  # measured once before ranked
    assert lowest_latency([slow, fast]).name == "fast"


@pytest.mark.parametrize("name", ["weighted", "least_inflight", "latency"])
def test_every_configured_strategy_exists(name: str) -> None:
    assert make_strategy(name)([Node("only")]).name == "only"
