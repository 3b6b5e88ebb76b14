"""Usage days come from the store's clock (Redis TIME), the one the quota scripts count days by."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import fakeredis.commands_mixins.server_mixin as fakeredis_server
import pytest

from proxy.auth import Principal
from proxy.settings import StoreSettings
from proxy.usage import UsageFilter, utc_day
from testkit.openai_upstream import FakeOpenAI
from testkit.servers import free_port
from tests.conftest import running_gateway, upstream_settings
from tests.support.admin import MASTER_KEY, TEN_TOKENS, admin, create_key, embed
from tests.support.services import Services, with_services

ALICE = Principal("key_a", "search")
AHEAD = timedelta(days=3)  # how far the store's clock runs ahead of the process's in these tests


class _ShiftedClock:
    """The `time` module as fakeredis sees it: its TIME (and so Lua's) runs `AHEAD` of the process clock."""

    @staticmethod
    def time() -> float:
        return time.time() + AHEAD.total_seconds()


@pytest.fixture
def store_clock_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[date]:
    """memory:// stores whose clock differs from the process clock; yields the store's UTC day."""
    monkeypatch.setattr(fakeredis_server, "time", _ShiftedClock)
    store_day = (datetime.now(UTC) + AHEAD).date()
    assert store_day != datetime.now(UTC).date()
    yield store_day


async def _tokens_on(s: Services, day: date) -> int:
    return (await s.usage.query(UsageFilter(), day, day)).total.tokens


@pytest.mark.asyncio
async def test_a_charge_time_names_the_day(store_settings: StoreSettings) -> None:
    new_years_eve = int(datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())

    async def body(s: Services) -> None:
        await s.usage.record(ALICE, None, "m", tokens=7, at=new_years_eve)  # a charge's Redis TIME seconds
        assert await _tokens_on(s, date(2024, 12, 31)) == 7
        assert await _tokens_on(s, date(2025, 1, 1)) == 0
    await with_services(store_settings, body)


@pytest.mark.asyncio
async def test_without_a_charge_time_the_day_is_the_stores(store_clock_ahead: date) -> None:
    async def body(s: Services) -> None:
        assert await s.usage.today() == store_clock_ahead
        await s.usage.record(ALICE, None, "m", tokens=5)
        assert await _tokens_on(s, store_clock_ahead) == 5
        assert await _tokens_on(s, datetime.now(UTC).date()) == 0  # not the process's day
    await with_services(StoreSettings(url="memory://"), body)


@pytest.mark.asyncio
async def test_today_is_the_stores_on_every_topology(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        seconds, _ = await s.store.client.time()
        assert await s.usage.today() == utc_day(int(seconds))
    await with_services(store_settings, body)


def test_a_request_is_counted_on_the_stores_day(fake_openai: FakeOpenAI, store_clock_ahead: date) -> None:
    settings = upstream_settings(fake_openai, auth={"master_key": MASTER_KEY})
    with running_gateway(settings) as gateway:
        key = create_key(gateway.url)
        assert embed(gateway.url, key["key"], input=TEN_TOKENS).status_code == 200
        # The default range ends on the store's today, and the request sits there, not on the process's day.
        report = admin(gateway.url, "GET", "/admin/usage").json()
        assert report["end"] == store_clock_ahead.isoformat()
        assert [d["date"] for d in report["data"] if d["tokens"]] == [store_clock_ahead.isoformat()]
        process_day = datetime.now(UTC).date().isoformat()
        assert admin(gateway.url, "GET", "/admin/usage", params={"start": process_day, "end": process_day}
                     ).json()["total"]["tokens"] == 0


@pytest.mark.asyncio
async def test_a_store_that_does_not_answer_fails_no_request() -> None:
    async def body(s: Services) -> None:
        await s.usage.record(ALICE, None, "m", tokens=5)  # neither TIME nor the write is answered: counted, not raised
        await s.usage.settle()
        await s.usage.record(ALICE, None, "m", tokens=5)  # now known to be down: the process's day, no TIME asked
        await s.usage.settle()
        assert s.errors.labels("usage")._value.get() == 3
    await with_services(StoreSettings(url=f"redis://127.0.0.1:{free_port()}/0", timeout=0.5), body)


@pytest.mark.asyncio
async def test_concurrent_requests_share_usage_writes_and_every_one_counts(store_settings: StoreSettings) -> None:
    """The group commit: records made while a write is under way go together in the next one, none is lost,
    and a report made right after sees them all (the reader waits for the writer)."""
    async def body(s: Services) -> None:
        writes = 0
        pipeline = s.store.pipeline

        def counted(*args: object, **kwargs: object) -> object:
            nonlocal writes
            writes += 1
            return pipeline(*args, **kwargs)

        s.store.pipeline = counted  # type: ignore[method-assign]
        day = await s.usage.today()
        at = int(datetime.combine(day, datetime.min.time(), UTC).timestamp())
        await asyncio.gather(*(s.usage.record(Principal(f"key_{n % 3}", "search"), f"u{n % 5}", "m", tokens=n,
                                              cache_hits=n % 2, at=at) for n in range(200)))
        report = await s.usage.query(UsageFilter(), day, day)
        assert (report.total.requests, report.total.tokens, report.total.cache_hits) == (200, sum(range(200)), 100)
        assert 1 <= writes < 10, writes  # not one write per request
        per_key = await s.usage.query(UsageFilter(key="key_1"), day, day)
        assert per_key.total.requests == len(range(1, 200, 3))
    await with_services(store_settings, body)
