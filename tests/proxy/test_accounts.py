"""Key and team records and usage counters in the store, on fakeredis, a real Redis and a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from proxy.accounts import PATCH_TRIES, Accounts, KeyCreate, KeyPatch, TeamConfig
from proxy.auth import Authenticator, KeyRecord, Principal, hash_key, record_key
from proxy.errors import AuthenticationFailed, Conflict, NotFound
from proxy.settings import AuthSettings, Limits, StoreSettings
from proxy.store import Outages
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


def race_after_read(s: Services, between: Callable[[str], Awaitable[None]], times: int = 1) -> None:
    """Run `between(key_id)` right after each of the first `times` reads of a key record from the store, before
    the reader can write it back: the interleaving of two admin calls, made deterministic."""
    client = s.store.client
    original = client.get
    left = [times]

    async def get(name: str) -> bytes | None:
        value = await original(name)
        if left[0] > 0 and name.startswith(s.store.key("key", "")):
            left[0] -= 1
            record = KeyRecord.model_validate_json(value)
            await between(record.id)
        return value  # type: ignore[no-any-return]
    client.get = get


def test_a_patch_racing_a_revoke_does_not_resurrect_the_key(store_settings: StoreSettings) -> None:
    """Issue 11 item 7: the DELETE lands between the PATCH's read and its write; the PATCH answers 404."""
    async def body(s: Services) -> None:
        record, secret = await s.accounts.create_key(KeyCreate(team="search"))

        async def revoke(key_id: str) -> None:
            await Accounts(s.store).revoke_key(key_id)
        race_after_read(s, revoke)
        with pytest.raises(NotFound):
            await s.accounts.patch_key(record.id, KeyPatch(name="renamed"))
        assert await s.store.client.get(record_key(s.store, hash_key(secret))) is None
        auth = Authenticator(AuthSettings(master_key="mk-" + "m" * 20), s.store, Outages(s.errors))
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {secret}")
        assert await s.accounts.list_keys() == []
    asyncio.run(with_services(store_settings, body))


def test_concurrent_patches_of_different_fields_keep_both(store_settings: StoreSettings) -> None:
    """Issue 10 (PATCH atomic): both admins read the same record before either writes; neither change is lost."""
    async def body(s: Services) -> None:
        record, _ = await s.accounts.create_key(KeyCreate(team="search"))
        both_read = asyncio.Barrier(2)

        async def wait_for_the_other(_: str) -> None:
            await both_read.wait()
        race_after_read(s, wait_for_the_other, times=2)
        await asyncio.gather(s.accounts.patch_key(record.id, KeyPatch(name="renamed")),
                             s.accounts.patch_key(record.id, KeyPatch(limits=Limits(rpm=7))))
        stored = await s.accounts.get_key(record.id)
        assert (stored.name, stored.limits.rpm) == ("renamed", 7)
    asyncio.run(with_services(store_settings, body))


def test_a_patch_that_keeps_losing_the_race_answers_409(store_settings: StoreSettings) -> None:
    async def body(s: Services) -> None:
        record, secret = await s.accounts.create_key(KeyCreate(team="search"))
        changes = iter(range(PATCH_TRIES))

        async def change_it(_: str) -> None:
            await s.store.client.set(record_key(s.store, hash_key(secret)),
                                     record.model_copy(update={"name": f"other {next(changes)}"}).model_dump_json())
        race_after_read(s, change_it, times=PATCH_TRIES)
        with pytest.raises(Conflict) as lost:
            await s.accounts.patch_key(record.id, KeyPatch(limits=Limits(rpm=1)))
        assert lost.value.status == 409 and lost.value.code == "key_conflict"
        assert (await s.accounts.get_key(record.id)).limits.rpm is None  # nothing of it was written
    asyncio.run(with_services(store_settings, body))
