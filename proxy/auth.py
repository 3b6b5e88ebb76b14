"""Who is calling: API keys (from the store or the config), the master key, the model allow-list.

Keys in the store are read on every request, so a revoked key stops working at once on every
replica. The in-process memory of recently verified keys serves two ends:
- while the store is down, a key verified within `auth.key_cache_ttl` seconds is let in (an
  unknown key gets 503);
- otherwise it is a guess (`identify`): the embeddings pipeline charges the quota for the key as
  remembered while the store's copy is read, so both go out in one round trip. The guess is never
  trusted: nothing is served before the store's copy confirms it, and a guess that proves wrong
  (revoked, expired, changed) is refunded and the request goes again as the store has it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from proxy.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from proxy.settings import AuthSettings, Limits, ModelEntry, StaticKey
from proxy.store import STORE_ERRORS, Outages, Store

KEY_PREFIX = "eg-"
RECENT_KEYS = 10_000  # bound of the outage cache


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def static_key_id(digest: str) -> str:
    """A static key's default id, from its hash: the same on every replica and in any config order,
    so its per-key counters and usage stay one."""
    return f"static-{digest[:12]}"


def redact(secret: str) -> str:
    return f"{secret[:6]}***{secret[-4:]}" if len(secret) > 12 else "***"


class KeyRecord(BaseModel):
    """What the store holds for a key: never the secret, only its sha256 (the record's address)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    team: str
    name: str | None = None
    models: tuple[str, ...] | None = None
    limits: Limits = Limits()
    expires_at: int | None = None
    created_at: int
    redacted: str

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request. `team` is None for the master key, which has no quotas."""

    key_id: str
    team: str | None
    models: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)

    def allows(self, requested: str, entry: ModelEntry | None = None) -> bool:
        if self.models is None:
            return True
        names = (requested,) if entry is None else (requested, entry.name)
        return any(fnmatchcase(name, allowed) for name in names for allowed in self.models)

    @classmethod
    def of(cls, record: KeyRecord | StaticKey, key_id: str) -> Principal:
        return cls(key_id=key_id, team=record.team, models=record.models, limits=record.limits)


MASTER = Principal(key_id="master", team=None)

# The store's read of a guessed caller, started by the first call and shared by later ones: the verified
# caller, or 401 (revoked, expired) or 503 (store down, key not verified recently), as `authenticate` would.
Confirm = Callable[[], Awaitable[Principal | None]]


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller of one request as known so far. With `confirm`, `principal` is a guess (the key as this
    replica last read it) and `confirm` the store's word on it, under way."""

    principal: Principal | None
    confirm: Confirm | None = None


ANONYMOUS = Caller(None)  # an open gateway's caller, and the bulk paths' that charge nothing


class KeyChanged(Exception):
    """A guessed caller proved to be out of date: the request must go again as `principal`."""

    def __init__(self, principal: Principal | None) -> None:
        super().__init__("the key changed since this replica last read it")
        self.principal = principal


async def verified(caller: Caller) -> Principal | None:
    """The principal of `caller` as the store has it."""
    return caller.principal if caller.confirm is None else await caller.confirm()


async def confirmed(caller: Caller) -> Principal | None:
    """The principal of `caller`, once the store confirmed it; KeyChanged when its guess was not it."""
    principal = await verified(caller)
    if principal != caller.principal:
        raise KeyChanged(principal)
    return principal


def authorize_model(principal: Principal | None, requested: str, entry: ModelEntry) -> None:
    """A model outside the key's allow-list is 403 `model_not_allowed` (see docs/quotas.md)."""
    if principal is not None and not principal.allows(requested, entry):
        raise PermissionDenied(f"This API key is not allowed to use the model '{requested}'.", param="model")


def record_key(store: Store, digest: str) -> str:
    return store.key("key", digest)


def _bearer(header: str | None) -> str:
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    try:  # aiohttp hands over bytes that are not UTF-8 as lone surrogates: no key looks like that
        token.encode()
    except UnicodeEncodeError:
        raise AuthenticationFailed("Incorrect API key provided: the key is not valid UTF-8.") from None
    return token


def _incorrect(token: str) -> AuthenticationFailed:
    return AuthenticationFailed(f"Incorrect API key provided: {redact(token)}.")


class Authenticator:
    def __init__(self, settings: AuthSettings, store: Store, outages: Outages) -> None:
        self._master = settings.master_key.get_secret_value() if settings.master_key else None
        self._static: dict[str, Principal] = {}
        for static in settings.keys:
            digest = static.key_sha256 or hash_key(static.key.get_secret_value())  # type: ignore[union-attr]
            self._static[digest] = Principal.of(static, static.id or static_key_id(digest))
        self._store = store
        self._outages = outages
        self._ttl = settings.key_cache_ttl
        self._recent: OrderedDict[str, _Seen] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False only with no master key and no configured keys: the gateway runs open."""
        return self._master is not None or bool(self._static)

    def is_master(self, header: str | None) -> bool:
        if self._master is None:
            return False
        return hmac.compare_digest(_bearer(header).encode(), self._master.encode())

    async def authenticate(self, header: str | None) -> Principal | None:
        """The caller, or None when the gateway runs open. Raises 401, or 503 in an outage."""
        if not self.enabled:
            return None
        token = _bearer(header)
        digest, known = self._without_store(token)
        return known if digest is None else await self._verify(token, digest)

    async def identify(self, header: str | None) -> Caller:
        """The caller, without waiting on the store for a key this replica verified before: then the
        remembered key comes with the store's read of it under way (see the module's docstring). Raises
        as `authenticate` does, for what can be told without the store."""
        if not self.enabled:
            return Caller(None)
        token = _bearer(header)
        digest, known = self._without_store(token)
        if digest is None:
            return Caller(known)
        seen = self._recent.get(digest)
        if seen is None or seen.record.is_expired(time.time()):
            return Caller(await self._verify(token, digest))
        record = seen.record
        return Caller(Principal.of(record, record.id), _ReadOnce(lambda: self._verify(token, digest)))

    def _without_store(self, token: str) -> tuple[str | None, Principal | None]:
        """The master or a static key (digest None), else the digest of a token the store must tell."""
        if self._master is not None and hmac.compare_digest(token.encode(), self._master.encode()):
            return None, MASTER
        digest = hash_key(token)
        static = self._static.get(digest)
        if static is not None:
            return None, static
        if not token.startswith(KEY_PREFIX):  # no store key looks like this: no need to ask the store
            raise _incorrect(token)
        return digest, None

    async def _verify(self, token: str, digest: str) -> Principal:
        record = await self._lookup(digest)
        if record is None:
            raise _incorrect(token)
        if record.is_expired(time.time()):
            raise AuthenticationFailed(f"The API key {redact(token)} has expired.")
        return Principal.of(record, record.id)

    async def _lookup(self, digest: str) -> KeyRecord | None:
        try:
            raw = await self._store.batched.call("GET", record_key(self._store, digest))
        except STORE_ERRORS as err:
            self._outages.failed("auth", err)
            seen = self._recent.get(digest)
            if seen is not None and time.monotonic() - seen.at <= self._ttl:
                return seen.record
            raise ServiceUnavailable("The key store is unavailable and this key was not verified recently. "
                                     "Please retry shortly.") from err
        self._outages.succeeded()
        if raw is None:
            self._recent.pop(digest, None)
            return None
        seen = self._recent.get(digest)
        # The same bytes as last time are the same record: parsing them again was a share of every request.
        record = seen.record if seen is not None and seen.raw == raw else KeyRecord.model_validate_json(raw)
        self._recent[digest] = _Seen(time.monotonic(), record, raw)
        self._recent.move_to_end(digest)
        if len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)
        return record


class _Seen(NamedTuple):
    """A key as last read from the store: when (monotonic), the record, and the bytes it was parsed from."""

    at: float
    record: KeyRecord
    raw: bytes


class _ReadOnce:
    """The store's read of a guessed key: started by the first caller that asks, in the turn of the event loop
    where the quota charge and the cache read go out too (proxy/coalesce.py sends the three as one pipeline),
    and shared with any later asker."""

    def __init__(self, read: Callable[[], Coroutine[Any, Any, Principal]]) -> None:
        self._read = read
        self._task: asyncio.Task[Principal] | None = None

    def __call__(self) -> asyncio.Task[Principal]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read())
            self._task.add_done_callback(_retrieved)
        return self._task


def _retrieved(task: asyncio.Task[Principal]) -> None:
    """A verification nobody awaited in the end (the request failed first) must not warn of a lost error."""
    if not task.cancelled():
        task.exception()
