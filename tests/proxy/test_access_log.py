"""proxy/observe.py `AccessLog`: request lines made in batches, each with its own request's time, none lost at
shutdown."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import proxy.observe
from proxy.metrics import Metrics
from proxy.observe import ACCESS, AccessLog, Exchange
from proxy.tracing import NO_SPAN
from testkit.openai_upstream import FakeOpenAI
from tests.conftest import running_gateway, upstream_config
from tests.support.http import embed_ok

BATCH = 0.2  # long next to the 10 ms steps below, so a stalled CI machine cannot make a batch come due early


class Lines:
    """The request lines logging has been handed so far (caplog sees every logger's records)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    @property
    def records(self) -> list[logging.LogRecord]:
        return [r for r in self._caplog.records if r.name == ACCESS.name]


@pytest.fixture
def kept(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.INFO, logger=ACCESS.name)
    return Lines(caplog)


def finished(access: AccessLog, request_id: str) -> tuple[float, float]:
    """One request's exchange finished now; returns the wall-clock times just before and just after it ended (a
    busy CI machine can stall between any two lines, so the test brackets the moment instead of guessing it)."""
    metrics = Metrics(["m"])
    exchange = Exchange(request_id, "POST", "/v1/embeddings", time.perf_counter(), status=200, model="m", team="t",
                        tokens=3, inputs=1, cache="miss", deployment="d")
    exchange.ended = time.perf_counter()
    before = time.time()
    exchange.finish(metrics, access, NO_SPAN, False)
    return before, time.time()


def test_lines_wait_for_their_batch_then_come_together_with_their_own_times(kept: Lines) -> None:
    async def serve() -> tuple[list[tuple[float, float]], int, int]:
        access = AccessLog(BATCH)
        ends = []
        for n in range(3):
            ends.append(finished(access, f"rid-{n}"))
            await asyncio.sleep(0.01)
        before_batch = len(kept.records)
        await asyncio.sleep(BATCH * 2)
        after_batch = len(kept.records)
        ends.append(finished(access, "rid-3"))  # a new batch, on a timer of its own
        await asyncio.sleep(BATCH * 2)
        return ends, before_batch, after_batch

    ends, before_batch, after_batch = asyncio.run(serve())
    assert (before_batch, after_batch) == (0, 3)
    assert [r.fields["request_id"] for r in kept.records] == ["rid-0", "rid-1", "rid-2", "rid-3"]  # type: ignore[attr-defined]
    assert kept.records[0].fields["status"] == 200 and kept.records[0].fields["cache"] == "miss"  # type: ignore[attr-defined]
    for record, (before, after) in zip(kept.records, ends, strict=True):
        # The time a request ended, not the batch's (written at least 170 ms later): the three of one batch are
        # 10 ms apart, as their requests.
        assert before <= record.created <= after
        assert record.msecs == pytest.approx(record.created % 1 * 1000)


def test_flush_writes_what_waits_once(kept: Lines) -> None:
    async def serve() -> tuple[int, int]:
        access = AccessLog(BATCH)
        finished(access, "a")
        finished(access, "b")
        access.flush()
        flushed = len(kept.records)
        await asyncio.sleep(BATCH * 2)  # the batch's timer was cancelled: nothing comes twice
        return flushed, len(kept.records)

    assert asyncio.run(serve()) == (2, 2)


def test_a_gateway_shutting_down_writes_the_lines_still_waiting(
        fake_openai: FakeOpenAI, kept: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy.observe, "ACCESS_BATCH_SECONDS", 3600.0)  # no batch comes due while it runs
    with running_gateway(upstream_config(fake_openai)) as gateway:
        embed_ok(gateway.url, ["shut"], headers={"x-request-id": "rid-last"})
        waiting = kept.records
    assert waiting == []
    assert [r.fields["request_id"] for r in kept.records] == ["rid-last"]  # type: ignore[attr-defined]
