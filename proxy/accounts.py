"""Keys and teams in the store: what the admin API and `embedgate keys|teams` manage.

Layout (every key under `store.prefix`):
  {p}:key:<sha256>        the key record (JSON); the secret itself is never stored
  {p}:keyid:<id>          sha256 of key <id>, to find its record
  {p}:teamkeys:<team>     set of the team's key ids
  {p}:teams               set of teams that have keys, a config or usage
  {p}:{t:<team>}:conf     hash of the team's limits and per-user default limits, read by quota.lua
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from proxy.auth import KeyRecord, hash_key, new_secret, record_key, redact
from proxy.errors import Conflict, NotFound
from proxy.quota import limits_fields, limits_from_fields, team_conf_key
from proxy.schema import IsoTime, KeyView, TeamView
from proxy.settings import TEAM_PATTERN, Limits
from proxy.store import Store

_TEAM = re.compile(TEAM_PATTERN)
PATCH_TRIES = 5  # reads and conditional writes of one PATCH racing others before it answers 409


def _epoch(value: int | datetime | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())


# Epoch seconds, or an ISO 8601 time (UTC when it names no zone).
ExpiresAt = int | IsoTime | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(_Body):
    team: str = Field(pattern=TEAM_PATTERN)
    name: str | None = Field(None, max_length=200)
    models: tuple[str, ...] | None = None
    limits: Limits = Limits()
    expires_at: ExpiresAt = None


class KeyPatch(_Body):
    """Fields left out stay as they are; `"models": null` removes the allow-list."""

    name: str | None = Field(None, max_length=200)
    models: tuple[str, ...] | None = None
    limits: Limits | None = None
    expires_at: ExpiresAt = None


class TeamConfig(_Body):
    limits: Limits = Limits()
    user_limits: Limits = Limits()


def key_view(record: KeyRecord, now: float | None = None) -> KeyView:
    return KeyView(**record.model_dump(), expired=record.is_expired(time.time() if now is None else now))


def check_team(team: str) -> str:
    if not _TEAM.fullmatch(team):
        raise NotFound(f"No team named {team!r}: team names match {TEAM_PATTERN}.", code="team_not_found")
    return team


def _no_key(key_id: str) -> NotFound:
    return NotFound(f"No API key with id {key_id!r}.", code="key_not_found")


class Accounts:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._client = store.client
        self._swap = store.client.register_script((resources.files("proxy") / "lua" / "swap_record.lua").read_text())

    def _id_key(self, key_id: str) -> str:
        return self._store.key("keyid", key_id)

    def _team_keys(self, team: str) -> str:
        return self._store.key("teamkeys", team)

    @property
    def _teams(self) -> str:
        return self._store.key("teams")

    async def create_key(self, body: KeyCreate) -> tuple[KeyRecord, str]:
        """A new key; the secret is returned here once and never stored."""
        secret = new_secret()
        digest = hash_key(secret)
        record = KeyRecord(id="key_" + secrets.token_hex(8), team=body.team, name=body.name, models=body.models,
                           limits=body.limits, expires_at=_epoch(body.expires_at), created_at=int(time.time()),
                           redacted=redact(secret))
        pipe = self._store.pipeline()
        pipe.set(self._id_key(record.id), digest)
        pipe.sadd(self._team_keys(record.team), record.id)
        pipe.sadd(self._teams, record.team)
        pipe.set(record_key(self._store, digest), record.model_dump_json())  # last: this makes the key valid
        await pipe.execute()
        return record, secret

    async def _read(self, key_id: str) -> tuple[str, bytes]:
        """The key's sha256 and its record as stored, or 404."""
        digest = await self._client.get(self._id_key(key_id))
        raw = None if digest is None else await self._client.get(record_key(self._store, digest.decode()))
        if digest is None or raw is None:
            raise _no_key(key_id)
        return digest.decode(), raw

    async def _load(self, key_id: str) -> tuple[str, KeyRecord]:
        """The key's sha256 and its record, or 404."""
        digest, raw = await self._read(key_id)
        return digest, KeyRecord.model_validate_json(raw)

    async def get_key(self, key_id: str) -> KeyRecord:
        return (await self._load(key_id))[1]

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]:
        teams = [team] if team else sorted(t.decode() for t in await self._client.smembers(self._teams))
        ids: list[str] = []
        for name in teams:
            ids += [i.decode() for i in await self._client.smembers(self._team_keys(name))]
        # Two batched reads for the whole list: ids → digests, digests → records.
        digests = [d.decode() for d in await self._store.get_many([self._id_key(i) for i in ids]) if d is not None]
        raws = await self._store.get_many([record_key(self._store, d) for d in digests])
        records = [KeyRecord.model_validate_json(raw) for raw in raws if raw is not None]  # None: revoked meanwhile
        return sorted(records, key=lambda r: (r.team, r.created_at, r.id))

    async def patch_key(self, key_id: str, body: KeyPatch) -> KeyRecord:
        """Change the given fields, atomically: the record is written only if it is still the one read. A key
        revoked meanwhile stays revoked (404); after another PATCH won the race, this one is applied on top
        of it, so neither change is lost (409 only if that keeps happening)."""
        changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
        if "expires_at" in changes:
            changes["expires_at"] = _epoch(body.expires_at)
        if "limits" in changes and changes["limits"] is None:
            changes["limits"] = Limits()
        for _ in range(PATCH_TRIES):
            digest, raw = await self._read(key_id)
            updated = KeyRecord.model_validate_json(raw).model_copy(update=changes)
            written = await self._swap(keys=[record_key(self._store, digest)], args=[raw, updated.model_dump_json()])
            if written == 1:
                return updated
            if written == -1:
                raise _no_key(key_id)
        raise Conflict(f"API key {key_id!r} kept changing while this change was applied; please retry.",
                       code="key_conflict")

    async def revoke_key(self, key_id: str) -> KeyRecord:
        digest, record = await self._load(key_id)
        await self._client.delete(record_key(self._store, digest))  # first: revoked from here on
        pipe = self._store.pipeline()
        pipe.delete(self._id_key(key_id))
        pipe.srem(self._team_keys(record.team), key_id)
        await pipe.execute()
        return record

    async def put_team(self, team: str, config: TeamConfig) -> TeamView:
        fields = {**limits_fields("team", config.limits), **limits_fields("user", config.user_limits)}
        await self._client.hset(team_conf_key(self._store, check_team(team)), mapping=fields)  # one atomic HSET
        await self._client.sadd(self._teams, team)
        return await self.get_team(team)

    async def get_team(self, team: str) -> TeamView:
        raw = await self._client.hgetall(team_conf_key(self._store, check_team(team)))
        keys = await self._client.scard(self._team_keys(team))
        if not raw and not keys:
            raise NotFound(f"No team named {team!r}.", code="team_not_found")
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return TeamView(team=team, keys=int(keys), limits=limits_from_fields("team", fields),
                        user_limits=limits_from_fields("user", fields))
