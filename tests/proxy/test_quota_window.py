"""The rate windows' bookkeeping (proxy/lua/_common.lua): each window hash keeps the total of its
buckets (SUM) and its oldest second (FROM) beside the buckets, so a check need not read them all.
Every test reads the hashes back through `buckets`, which fails when either field is out of step
with the buckets; on fakeredis, a real Redis and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from proxy.ledger import WINDOW, Increment
from proxy.quota import COUNTERS, Charge, format_reset, quota_keys
from proxy.settings import StoreSettings
from tests.support.quota import BASE_MS, SUM, TEAM, buckets, clocked, key
from tests.support.services import Services, with_services

BASE = BASE_MS // 1000
LIMIT = 1000


def run(settings: StoreSettings, body: Callable[[Services], Awaitable[None]]) -> None:
    asyncio.run(with_services(settings, body))


def window_key(s: Services, key_id: str, counter: str = "tk", level: int = 0) -> str:
    """A window hash of `key_id`'s charges: level 0 is the key's own, 1 the team's."""
    return quota_keys(s.store, TEAM, key_id, None)[1 + level * len(COUNTERS) + COUNTERS.index(counter)]


async def window(s: Services, key_id: str, counter: str = "tk", level: int = 0) -> dict[int, int]:
    return buckets(await s.store.client.hgetall(window_key(s, key_id, counter, level)))


def live(model: dict[int, int], now: int) -> dict[int, int]:
    """The buckets still in the window at second `now`: each stays until it is 60 s old (quota.lua's `leaves`)."""
    return {sec: value for sec, value in model.items() if sec >= now - 60}


def reset(oldest: int, now_ms: int) -> str:
    """x-ratelimit-reset-* for a window whose oldest live bucket is second `oldest`."""
    return format_reset((oldest + 61) * 1000 - now_ms)


def test_the_total_stays_exact_as_buckets_leave_the_window(store_settings: StoreSettings) -> None:
    """Four minutes of charges at random times: after each, the key's token window (limited) and the
    team's (no limit: settled all the same, rather than piling up buckets) hold exactly the live buckets."""
    rng = random.Random(5)
    times = sorted(BASE_MS + rng.randrange(240_000) for _ in range(150))
    costs = [rng.randint(1, 5) for _ in times]

    async def body(s: Services) -> None:
        quotas, clock = clocked(s)
        principal = key(tpm=LIMIT, key_id="exact")
        model: dict[int, int] = {}
        for at, cost in zip(times, costs, strict=True):
            clock.ms = at
            charge = await quotas.charge(principal, None, cost)
            model = live({**model, at // 1000: model.get(at // 1000, 0) + cost}, at // 1000)
            assert await window(s, "exact") == model
            assert await window(s, "exact", level=1) == model
            assert charge.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - sum(model.values()))
            assert charge.headers["x-ratelimit-reset-tokens"] == reset(min(model), at)
    run(store_settings, body)


def test_refunds_keep_the_total_and_the_oldest_second(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        quotas, clock = clocked(s)
        principal = key(tpm=LIMIT, key_id="refunds")
        charges = []
        for offset, cost in ((0, 10), (5, 20), (9, 30)):
            clock.ms = BASE_MS + offset * 1000
            charges.append(await quotas.charge(principal, None, cost))
        await quotas.refund(charges[1], 5)  # part of a bucket
        assert await window(s, "refunds") == {BASE: 10, BASE + 5: 15, BASE + 9: 30}
        await quotas.refund(charges[0])  # the whole oldest bucket: `from` moves on to the next
        assert await window(s, "refunds") == {BASE + 5: 15, BASE + 9: 30}
        clock.ms = BASE_MS + 10_000
        charge = await quotas.charge(principal, None, 1)
        assert charge.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - 46)
        assert charge.headers["x-ratelimit-reset-tokens"] == reset(BASE + 5, clock.ms)
        for done in (*charges, charge):
            await quotas.refund(done)
        # No bucket left: the hash goes, bookkeeping and all (it would otherwise outlive its TTL's purpose).
        assert await s.store.client.exists(window_key(s, "refunds")) == 0
    run(store_settings, body)


def test_a_ledger_flush_into_an_older_second_counts_and_moves_from_back(store_settings: StoreSettings) -> None:
    """The outage ledger replays charges into the seconds they were made in, on the store's own clock."""
    async def body(s: Services) -> None:
        principal = key(tpm=LIMIT, key_id="flushed")
        await s.quotas.charge(principal, None, 10)
        now = int((await s.store.client.time())[0])
        s.ledger.add(TEAM, [(Increment(WINDOW, window_key(s, "flushed")), 25, now - 30),
                            (Increment(WINDOW, window_key(s, "flushed", "rq")), 1, now - 90)])  # left the window
        assert await s.ledger.flush()
        tokens = await window(s, "flushed")
        assert tokens[now - 30] == 25 and min(tokens) == now - 30 and sum(tokens.values()) == 35
        assert sum((await window(s, "flushed", "rq")).values()) == 1  # nothing added to it
        charge = await s.quotas.charge(principal, None, 5)
        assert charge.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - 40)
    run(store_settings, body)


# 65 s after the last bucket, every bucket has left but the first is within two windows: the walk
# from `from` removes them all. Past that the whole hash is read once instead.
@pytest.mark.parametrize("idle", [65, 200, 3600])
def test_an_idle_gap_longer_than_the_window_empties_it(store_settings: StoreSettings, idle: int) -> None:
    async def body(s: Services) -> None:
        quotas, clock = clocked(s)
        principal = key(tpm=LIMIT, key_id="idle")
        for offset in range(0, 51, 5):
            clock.ms = BASE_MS + offset * 1000
            await quotas.charge(principal, None, 10)
        clock.ms = BASE_MS + (50 + idle) * 1000 + 250
        charge = await quotas.charge(principal, None, 7)
        assert await window(s, "idle") == {BASE + 50 + idle: 7}
        assert charge.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - 7)
        assert charge.headers["x-ratelimit-reset-tokens"] == reset(BASE + 50 + idle, clock.ms)
    run(store_settings, body)


def test_a_window_written_before_the_bookkeeping_is_read_in_full_once(store_settings: StoreSettings) -> None:
    """A hash of buckets alone, as Redis holds them from before this change (or as the previous version
    leaves one it charged during a rolling deploy), counts what is live in it; a refund into it leaves
    it as it is, and the next check writes the bookkeeping."""
    async def body(s: Services) -> None:
        quotas, clock = clocked(s)
        principal = key(tpm=LIMIT, key_id="legacy")
        now = BASE + 100
        old = {now - 70: 5, now - 61: 6, now - 60: 7, now - 3: 8}  # the first two have left the window
        await s.store.client.hset(window_key(s, "legacy"), mapping=old)
        keys = tuple(quota_keys(s.store, TEAM, "legacy", None))
        await quotas.refund(Charge(keys, tokens=3, charged_at=now - 3))
        assert await s.store.client.hgetall(window_key(s, "legacy")) == \
            {str(sec).encode(): str(value).encode() for sec, value in {**old, now - 3: 5}.items()}
        clock.ms = now * 1000 + 500
        charge = await quotas.charge(principal, None, 1)
        assert await window(s, "legacy") == {now - 60: 7, now - 3: 5, now: 1}
        assert str(SUM).encode() in await s.store.client.hgetall(window_key(s, "legacy"))
        assert charge.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - 13)
        assert charge.headers["x-ratelimit-reset-tokens"] == reset(now - 60, clock.ms) == "500ms"
    run(store_settings, body)


def test_a_total_out_of_step_is_put_right_within_a_minute(store_settings: StoreSettings) -> None:
    """The previous version, during a rolling deploy, charges a window it does not check (here the key's
    request window: no rpm) into its bucket alone. The total misses that until the cutoff next passes a
    minute boundary, when the whole hash is read again."""
    async def body(s: Services) -> None:
        quotas, clock = clocked(s)
        principal = key(tpm=LIMIT, key_id="drift")
        for second in range(131):
            clock.ms = BASE_MS + second * 1000 + 500
            await quotas.charge(principal, None, 1)
            if second == 10:
                await s.store.client.hincrby(window_key(s, "drift", "rq"), str(BASE + 10), 3)
        assert await window(s, "drift", "rq") == dict.fromkeys(range(BASE + 70, BASE + 131), 1)
    run(store_settings, body)
