"""Key and team records and usage counters in the store, on fakeredis, a real Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from proxy.accounts import KeyCreate, KeyPatch, TeamConfig
from proxy.auth import KeyRecord, Principal, hash_key, record_key
from proxy.errors import NotFound
from proxy.settings import Limits, StoreSettings
from proxy.usage import UsageFilter
from tests.support.services import Services, with_services


def test_keys_are_stored_by_hash_and_revoked_everywhere(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        record, secret = await s.accounts.create_key(KeyCreate(team="search", limits=Limits(rpm=5)))
        stored = await s.store.client.get(record_key(s.store, hash_key(secret)))
        assert KeyRecord.model_validate_json(stored) == record
        assert secret.encode() not in stored
        await s.accounts.create_key(KeyCreate(team="other"))
        assert [r.id for r in await s.accounts.list_keys("search")] == [record.id]
        assert len(await s.accounts.list_keys()) == 2

        patched = await s.accounts.patch_key(record.id, KeyPatch(models=("ada",)))
        assert (patched.models, patched.limits.rpm) == (("ada",), 5)  # untouched fields stay
        await s.accounts.revoke_key(record.id)
        assert await s.store.client.get(record_key(s.store, hash_key(secret))) is None
        with pytest.raises(NotFound):
            await s.accounts.get_key(record.id)
        assert await s.accounts.list_keys("search") == []

        team = await s.accounts.put_team("search", TeamConfig(user_limits=Limits(tpm=7)))
        assert team.user_limits.tpm == 7 and team.limits.tpm is None
    asyncio.run(with_services(store_settings, body))


def test_usage_is_summed_per_day_with_filters(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        alice, bob = Principal("key_a", "search"), Principal("key_b", "other")
        await s.usage.record(alice, "alice", "m1", tokens=10)
        await s.usage.record(alice, None, "m2", tokens=5, cache_hits=1)
        await s.usage.record(bob, "alice", "m1", tokens=3)
        await s.usage.record(None, None, "m1", tokens=99)  # open mode records nothing
        today = datetime.now(UTC).date()

        async def total(**where: str) -> dict[str, int]:
            return (await s.usage.query(UsageFilter(**where), today, today)).total.model_dump()

        assert await total() == {"requests": 3, "tokens": 18, "cache_hits": 1}
        assert await total(team="search") == {"requests": 2, "tokens": 15, "cache_hits": 1}
        assert await total(user="alice") == {"requests": 2, "tokens": 13, "cache_hits": 0}
        assert await total(model="m1", key="key_b") == {"requests": 1, "tokens": 3, "cache_hits": 0}
    asyncio.run(with_services(store_settings, body))
