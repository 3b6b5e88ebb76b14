"""Accounting through a store outage (proxy/ledger.py): charges and usage kept in process, applied
exactly once on a real Redis that comes back, spilled at shutdown and replayed by the next start."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeout

from proxy.errors import QuotaExceeded
from proxy.settings import StoreSettings
from proxy.usage import UsageFilter
from testkit.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer
from tests.support.quota import TEAM, counters, key
from tests.support.services import Services, with_services


@pytest.fixture
def later_redis() -> Iterator[RedisServer]:
    """A Redis whose port is chosen but that is not running yet: the store starts out down."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    server = RedisServer()
    yield server
    server.stop()


def run(redis: RedisServer, body: Callable[[Services], Awaitable[None]], **kwargs: Any) -> None:
    settings = StoreSettings(url=redis.url, timeout=0.3, prefix="led")
    asyncio.run(with_services(settings, body, **kwargs))


async def usage_total(s: Services) -> dict[str, int]:
    today = await s.usage.today()  # the store's day, as usage records it
    return (await s.usage.query(UsageFilter(team=TEAM), today, today)).total.model_dump()


def test_charges_made_during_an_outage_reach_the_counters_when_it_ends(later_redis: RedisServer) -> None:
    budget = key(per_day=100)

    async def body(s: Services) -> None:
        for _ in range(12):  # 120 tokens served against a budget of 100: nobody could check it
            await s.quotas.charge(budget, "alice", 10)
            await s.usage.record(budget, "alice", "m", tokens=10)
        await s.usage.settle()  # the usage writer has met the outage: its counts are in the ledger
        assert s.ledger.pending
        later_redis.start()
        assert await s.ledger.flush()
        assert not s.ledger.pending
        seen = await counters(s, budget, "alice")
        assert {level: (c["rq"], c["tk"], c["td"], c["tm"]) for level, c in seen.items()} == \
            {level: (12, 120, 120, 120) for level in ("key", "team", "user")}
        assert await usage_total(s) == {"requests": 12, "tokens": 120, "cache_hits": 0}
        with pytest.raises(QuotaExceeded):  # overspent during the outage: still over, not reset
            await s.quotas.charge(budget, "alice", 1)

    run(later_redis, body)


def test_a_refund_during_the_outage_gives_back_tokens_but_not_the_request(later_redis: RedisServer) -> None:
    async def body(s: Services) -> None:
        charge = await s.quotas.charge(key(), None, 30)
        await s.quotas.refund(charge, 20)
        later_redis.start()
        assert await s.ledger.flush()
        assert (await counters(s, key()))["team"] == {"rq": 1, "tk": 10, "td": 10, "tm": 10}

    run(later_redis, body)


def test_a_refund_of_the_request_during_the_outage_gives_back_both(later_redis: RedisServer) -> None:
    async def body(s: Services) -> None:
        kept = await s.quotas.charge(key(), None, 10)
        undeserved = await s.quotas.charge(key(), None, 30)
        await s.quotas.refund(undeserved, request=True)
        assert kept.missed_at is not None and s.ledger.pending
        later_redis.start()
        assert await s.ledger.flush()
        assert (await counters(s, key()))["team"] == {"rq": 1, "tk": 10, "td": 10, "tm": 10}

    run(later_redis, body)


def test_a_flush_retried_after_a_lost_reply_counts_once(later_redis: RedisServer) -> None:
    async def body(s: Services) -> None:
        await s.usage.record(key(), None, "m", tokens=7)
        await s.usage.settle()
        later_redis.start()
        apply = s.ledger._apply
        lost = {"n": 0}

        async def applied_but_reply_lost(**kwargs: Any) -> Any:
            await apply(**kwargs)
            if not lost["n"]:
                lost["n"] += 1
                raise RedisTimeout("reply lost after the script ran")
            return 1

        s.ledger._apply = applied_but_reply_lost  # type: ignore[assignment]
        assert not await s.ledger.flush()  # the first try landed, but we cannot know: kept, same id
        assert s.ledger.pending
        assert await s.ledger.flush()
        assert await usage_total(s) == {"requests": 1, "tokens": 7, "cache_hits": 0}

    run(later_redis, body)


def test_what_is_pending_at_shutdown_is_spilled_and_replayed_once(later_redis: RedisServer, tmp_path: Path) -> None:
    async def before_restart(s: Services) -> None:
        for user in ("a", "b"):
            await s.usage.record(key(), user, "m", tokens=5)
        await s.usage.settle()
        assert not await s.ledger.flush()
        assert s.ledger.spill() is not None

    async def after_restart(s: Services) -> None:
        assert s.ledger.replay() == 1
        assert s.ledger.replay() == 0  # claimed: not queued twice
        assert await s.ledger.flush()
        assert await usage_total(s) == {"requests": 2, "tokens": 10, "cache_hits": 0}

    run(later_redis, before_restart, spill_dir=tmp_path)
    assert [p.name.startswith("pending-") for p in tmp_path.iterdir()] == [True]
    later_redis.start()
    run(later_redis, after_restart, spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # applied: the claimed file is gone


def test_past_the_bound_usage_keeps_per_key_totals_only(later_redis: RedisServer) -> None:
    async def body(s: Services) -> None:
        for n in range(400):
            await s.usage.record(key(), f"user-{n}", "m", tokens=1)
            await s.usage.settle()  # one write (and one failure) per request, as one client at a time gives
        assert s.ledger.size < 150  # 100 detailed counters, then one coarse one per counter and key
        later_redis.start()
        assert await s.ledger.flush()
        assert await usage_total(s) == {"requests": 400, "tokens": 400, "cache_hits": 0}

    run(later_redis, body, max_pending=100)
