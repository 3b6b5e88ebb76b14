"""quota.lua and refund.lua through `Quotas`, on fakeredis, a real Redis and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

import pytest
import redis

from proxy.accounts import TeamConfig
from proxy.auth import Caller, Principal
from proxy.embeddings import _charge
from proxy.errors import GatewayError, InvalidRequest, QuotaExceeded, RateLimited
from proxy.gateway import Gateway
from proxy.lua import counter_script
from proxy.quota import Charge, Quotas, format_reset, quota_keys
from proxy.settings import Limits, StoreSettings
from testkit.redis_server import RedisServer
from tests.support.quota import BASE_MS, TEAM, Clock, clocked, counters, key
from tests.support.services import Services, with_services


def run(settings: StoreSettings, body: Callable[[Services], Awaitable[None]]) -> None:
    asyncio.run(with_services(settings, body))


async def burst(s: Services, principal: Principal, n: int, tokens: int,
                user: str | None = None) -> tuple[list[Charge], list[GatewayError]]:
    results = await asyncio.gather(*(s.quotas.charge(principal, user, tokens) for _ in range(n)),
                                   return_exceptions=True)
    admitted = [r for r in results if isinstance(r, Charge)]
    refused = [r for r in results if isinstance(r, GatewayError)]
    assert len(admitted) + len(refused) == n, [r for r in results if not isinstance(r, (Charge, GatewayError))]
    return admitted, refused


def test_a_burst_of_200_against_rpm_50_admits_exactly_50(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        admitted, refused = await burst(s, key(rpm=50), 200, tokens=1)
        assert (len(admitted), len(refused)) == (50, 150)
        assert all(isinstance(r, RateLimited) and r.code == "rate_limit_exceeded" for r in refused)
        assert all(1 <= int(r.headers["Retry-After"]) <= 61 for r in refused)  # a bucket leaves 60-61 s on
        assert "requests per minute (rpm) on API key key_a: limit 50" in refused[0].message
        assert sorted(int(c.headers["x-ratelimit-remaining-requests"]) for c in admitted) == list(range(50))
        assert (await counters(s, key()))["key"]["rq"] == 50
    run(store_settings, body)


def test_a_token_limit_admits_exactly_what_fits(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        admitted, refused = await burst(s, key(tpm=100), 40, tokens=7)
        assert (len(admitted), len(refused)) == (14, 26)  # 14 * 7 = 98 <= 100 < 105
        assert all(r.code == "rate_limit_exceeded" and "tokens per minute (tpm)" in r.message for r in refused)
        assert refused[0].headers["x-ratelimit-remaining-tokens"] == "2"
        assert (await counters(s, key()))["key"] == {"rq": 14, "tk": 98, "td": 98, "tm": 98}
    run(store_settings, body)


def test_a_rejected_request_charges_nothing_at_any_level(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        await s.accounts.put_team(TEAM, TeamConfig(limits=Limits(tpm=15)))
        principal = key(rpm=100)
        await s.quotas.charge(principal, "alice", 10)
        with pytest.raises(RateLimited, match="tokens per minute \\(tpm\\) on team 'search': limit 15"):
            await s.quotas.charge(principal, "alice", 10)
        charged_once = {"rq": 1, "tk": 10, "td": 10, "tm": 10}
        assert await counters(s, principal, "alice") == {"key": charged_once, "team": charged_once,
                                                         "user": charged_once}
    run(store_settings, body)


def test_user_limits_hold_per_user_within_the_team(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        await s.accounts.put_team(TEAM, TeamConfig(user_limits=Limits(rpm=2)))
        principal = key()
        admitted, refused = await burst(s, principal, 5, tokens=1, user="alice")
        assert (len(admitted), len(refused)) == (2, 3)
        assert "on user 'alice' of team 'search': limit 2" in refused[0].message
        await s.quotas.charge(principal, "bob", 1)  # another user has their own allowance
        assert (await counters(s, principal, "bob"))["team"]["rq"] == 3
        await s.quotas.charge(principal, None, 1)  # no `user`: no user level
    run(store_settings, body)


def test_day_and_month_budgets_are_insufficient_quota(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        await s.accounts.put_team(TEAM, TeamConfig(limits=Limits(tokens_per_month=50)))
        principal = key(per_day=25)
        ok = await s.quotas.charge(principal, None, 10)
        assert ok.headers["x-ratelimit-limit-tokens"] == "25"
        assert ok.headers["x-ratelimit-remaining-tokens"] == "15"
        await s.quotas.charge(principal, None, 10)
        with pytest.raises(QuotaExceeded) as day:
            await s.quotas.charge(principal, None, 10)
        assert day.value.code == "insufficient_quota" and day.value.status == 429
        assert "tokens per day (tokens_per_day) on API key key_a: limit 25" in day.value.message
        assert 1 <= int(day.value.headers["Retry-After"]) <= 86400
        other = key(key_id="key_b")  # the team's month budget: 20 spent, 30 left
        await s.quotas.charge(other, None, 30)
        with pytest.raises(QuotaExceeded, match="tokens per month \\(tokens_per_month\\) on team 'search'"):
            await s.quotas.charge(other, None, 1)
    run(store_settings, body)


def test_refund_returns_exactly_the_charged_tokens_and_never_goes_negative(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        principal = key(tpm=100, per_day=1000)
        kept = await s.quotas.charge(principal, "alice", 5)
        failed = await s.quotas.charge(principal, "alice", 30)
        await s.quotas.refund(failed)
        after = {"rq": 2, "tk": 5, "td": 5, "tm": 5}  # the request still counts; its tokens do not
        assert await counters(s, principal, "alice") == {"key": after, "team": after, "user": after}
        await s.quotas.refund(failed)  # a second refund of the same charge cannot go below zero
        await s.quotas.refund(kept)
        await s.quotas.refund(kept)
        zero = {"rq": 2, "tk": 0, "td": 0, "tm": 0}
        assert await counters(s, principal, "alice") == {"key": zero, "team": zero, "user": zero}
        refreshed = await s.quotas.charge(principal, "alice", 100)  # the whole window is free again
        assert refreshed.headers["x-ratelimit-remaining-tokens"] == "0"
    run(store_settings, body)


def test_a_refund_of_the_request_gives_back_its_rpm_count_too(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        principal = key(rpm=2)
        kept = await s.quotas.charge(principal, "alice", 5)
        undeserved = await s.quotas.charge(principal, "alice", 30)  # a charge whose key proved revoked
        await s.quotas.refund(undeserved, request=True)
        kept_only = {"rq": 1, "tk": 5, "td": 5, "tm": 5}
        assert await counters(s, principal, "alice") == {"key": kept_only, "team": kept_only, "user": kept_only}
        for charge in (undeserved, kept, kept):  # more than was charged: the counters stop at zero
            await s.quotas.refund(charge, request=True)
        zero = {"rq": 0, "tk": 0, "td": 0, "tm": 0}
        assert await counters(s, principal, "alice") == {"key": zero, "team": zero, "user": zero}
        again = await s.quotas.charge(principal, "alice", 1)  # the rpm window is free again
        assert again.headers["x-ratelimit-remaining-requests"] == "1"
    run(store_settings, body)


def test_headers_without_a_charge_change_nothing(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        principal = key(rpm=3, tpm=30)
        await s.quotas.charge(principal, None, 10)
        headers = await s.quotas.headers(principal, None)
        assert headers["x-ratelimit-remaining-requests"] == "2"
        assert headers["x-ratelimit-remaining-tokens"] == "20"
        assert (await counters(s, principal))["key"]["rq"] == 1
        assert await s.quotas.headers(key(key_id="unlimited"), None) == {}
    run(store_settings, body)


def _civil(ts: int) -> tuple[str, int, str, int]:
    day = datetime.fromtimestamp(ts, UTC)
    midnight = day.replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    return (day.strftime("%Y%m%d"), int((midnight + timedelta(days=1)).timestamp()),
            day.strftime("%Y%m"), int(next_month.timestamp()))


def test_the_lua_calendar_matches_python(store_settings: StoreSettings) -> None:
    edges = [datetime(y, m, d, tzinfo=UTC) for y, m, d in
             [(2000, 2, 29), (2000, 3, 1), (2024, 2, 29), (2024, 12, 31), (2100, 2, 28), (2100, 3, 1), (2038, 1, 19)]]
    stamps = [int(e.timestamp()) + delta for e in edges for delta in (-1, 0, 86399)]
    stamps += random.Random(3).sample(range(0, 5_000_000_000), 300)

    async def body(s: Services) -> None:
        script = s.store.client.register_script(counter_script("refund.lua").split("\nlocal sec")[0] + """
            local out = {}
            for i, ts in ipairs(ARGV) do
              local d, de, m, me = periods(tonumber(ts))
              out[i] = {d, de, m, me}
            end
            return out""")
        replies = await script(keys=[s.store.team_key(TEAM, "calendar")], args=stamps)
        got = [(d.decode(), int(de), m.decode(), int(me)) for d, de, m, me in replies]
        assert got == [_civil(ts) for ts in stamps]
    run(store_settings, body)


@pytest.mark.parametrize(("ms", "text"), [(0, "0s"), (20, "20ms"), (1000, "1s"), (1001, "2s"), (360_000, "6m0s"),
                                          (3_723_000, "1h2m3s")])
def test_reset_is_formatted_like_openai(ms: int, text: str) -> None:
    assert format_reset(ms) == text


async def admitted_at(quotas: Quotas, clock: Clock, principal: Principal, times_ms: list[int],
                      tokens: list[int]) -> list[tuple[int, int]]:
    """Charge one request at each time; the (time, tokens) of those admitted."""
    admitted = []
    for at, cost in zip(times_ms, tokens, strict=True):
        clock.ms = at
        try:
            await quotas.charge(principal, None, cost)
        except RateLimited:
            continue
        admitted.append((at, cost))
    return admitted


def most_in_any_minute(admitted: list[tuple[int, int]], weight: Callable[[int], int]) -> int:
    """The most requests (or tokens) admitted within any 60-second span [t, t + 60 s)."""
    return max(sum(weight(c) for at, c in admitted if start <= at < start + 60_000) for start, _ in admitted)


def test_a_minute_window_holds_across_a_bucket_boundary(store_settings: StoreSettings) -> None:
    """Issue 11 item 14: rpm spent at 0.999 s is not given again at 60.0 s (59.001 s later)."""
    async def body(s: Services) -> None:
        quotas, clock = clocked(s)
        principal = key(rpm=5, key_id="boundary")
        assert len(await admitted_at(quotas, clock, principal, [BASE_MS + 999] * 5, [1] * 5)) == 5
        clock.ms = BASE_MS + 60_000
        with pytest.raises(RateLimited) as refused:
            await quotas.charge(principal, None, 1)
        clock.ms += int(refused.value.headers["Retry-After"]) * 1000
        await quotas.charge(principal, None, 1)  # after Retry-After it fits, 60 to 61 s after the first
        assert 60_999 <= clock.ms - BASE_MS <= 61_000
    run(store_settings, body)


@pytest.mark.parametrize("kind", ["rpm", "tpm"])
def test_no_minute_ever_admits_more_than_the_limit(store_settings: StoreSettings, kind: str) -> None:
    """Issue 11 item 14: requests at random times over five minutes; no 60 s span holds more than the limit,
    and the limit is reached (the window is not simply closed)."""
    rng = random.Random(11)
    times = sorted(BASE_MS + rng.randrange(300_000) for _ in range(400))
    costs = [rng.randint(1, 30) for _ in times]
    limit = 12 if kind == "rpm" else 150

    async def body(s: Services) -> None:
        quotas, clock = clocked(s)
        principal = key(rpm=limit, key_id="spread") if kind == "rpm" else key(tpm=limit, key_id="spread")
        admitted = await admitted_at(quotas, clock, principal, times, costs)
        weight: Callable[[int], int] = (lambda _: 1) if kind == "rpm" else (lambda cost: cost)
        assert most_in_any_minute(admitted, weight) <= limit
        assert most_in_any_minute(admitted, weight) >= limit - (0 if kind == "rpm" else 30)
    run(store_settings, body)


def test_a_request_larger_than_a_limit_is_refused_for_good_and_charges_nothing(store_settings: StoreSettings) -> None:
    """Issue 11 item 15: even while another limit is only full for now, the answer is the permanent one."""
    async def body(s: Services) -> None:
        principal = key(rpm=1, per_month=50)
        await s.quotas.charge(principal, "alice", 5)  # rpm is now full for a minute
        with pytest.raises(InvalidRequest) as too_big:
            await s.quotas.charge(principal, "alice", 51)
        refusal = too_big.value
        assert (refusal.status, refusal.code, refusal.param) == (400, "request_exceeds_limit", "input")
        assert "51 tokens exceed the tokens per month (tokens_per_month) limit of 50 on this API key" \
            in too_big.value.message
        once = {"rq": 1, "tk": 5, "td": 5, "tm": 5}
        assert await counters(s, principal, "alice") == {"key": once, "team": once, "user": once}
    run(store_settings, body)


def test_counters_expire_once_what_they_count_is_over(store_settings: StoreSettings) -> None:
    """Only the charge that opens a bucket (a day, a month) sets its hash's expiry: the first one must."""
    async def body(s: Services) -> None:
        principal = key(key_id="expiring")
        rq, tk, day, month = quota_keys(s.store, TEAM, "expiring", None)[1:5]
        for _ in range(3):  # the first opens them all; the next ones (likely in the same second) open none
            await s.quotas.charge(principal, None, 5)
            for window in (rq, tk):  # 65 s from its newest bucket's opening: past the bucket's 61 s
                assert 0 < await s.store.client.ttl(window) <= 65
            assert 0 < await s.store.client.ttl(day) <= 2 * 86400  # a day after the day ends
            assert 86400 < await s.store.client.ttl(month) <= 32 * 86400
    run(store_settings, body)


def test_a_request_cancelled_while_its_guessed_key_is_confirmed_gives_its_charge_back(
        store_settings: StoreSettings) -> None:
    """A client that hangs up after the charge, while the store still confirms the key it was charged as."""
    async def body(s: Services) -> None:
        principal = key(rpm=10)
        never: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()  # the key's read hangs
        gateway = cast(Gateway, SimpleNamespace(quotas=s.quotas))
        request = asyncio.create_task(_charge(gateway, Caller(principal, lambda: never), "alice", 7))
        for _ in range(500):  # until the charge has landed
            if (await counters(s, principal, "alice"))["key"]["rq"] == 1:
                break
            await asyncio.sleep(0.01)
        assert not request.done()  # waiting on the key's read
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        zero = {"rq": 0, "tk": 0, "td": 0, "tm": 0}
        assert await counters(s, principal, "alice") == {"key": zero, "team": zero, "user": zero}
    run(store_settings, body)


def test_a_request_cancelled_while_its_charge_is_under_way_gets_its_tokens_back(redis_server: RedisServer) -> None:
    """The client hangs up while quota.lua waits in Redis (held by CLIENT PAUSE): the charge still lands, and
    its tokens are given back once it has; the request counts, as any request that failed after its charge."""
    settings = StoreSettings(url=redis_server.url, prefix=f"t{secrets.token_hex(4)}")
    admin = redis.Redis.from_url(redis_server.url)

    async def body(s: Services) -> None:
        principal = key(rpm=10, tpm=100)
        await s.quotas.charge(principal, "alice", 1)  # quota.lua loaded, so the next charge is one EVALSHA
        admin.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        try:
            request = asyncio.create_task(s.quotas.charge(principal, "alice", 7))
            await asyncio.sleep(0.1)  # sent, and held by Redis
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        await s.quotas.settle()
        after = {"rq": 2, "tk": 1, "td": 1, "tm": 1}
        assert await counters(s, principal, "alice") == {"key": after, "team": after, "user": after}
    try:
        run(settings, body)
    finally:
        admin.close()
