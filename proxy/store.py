"""The shared store: a real Redis (`redis://`, `rediss://`, `unix://`, Redis Cluster) or,
for `memory://`, the same commands and Lua scripts run in-process by fakeredis.

One code path, two backends: nothing above this module knows which one it talks to.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from proxy.coalesce import Coalescer
from proxy.settings import StoreSettings
from proxy.wire import Command, Wire

log = logging.getLogger("embedgate.store")

# What a store outage looks like from redis-py: connection errors, timeouts, cluster errors.
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


# How long a request waits for a free pooled connection before that counts as a store failure.
POOL_WAIT_SECONDS = 5.0
# A blocking pool (one Redis) queues a burst past its size, so it can stay small: a cold replica hit by a
# burst opened a connection per command in flight, and hundreds of connects at once timed out as an
# outage. Cluster and Sentinel pools fail a burst past their size instead: theirs stays large.
BLOCKING_POOL = 64
FAILING_POOL = 256


def connect(settings: StoreSettings) -> Any:
    """The client for `settings.url`. Standalone clients share a blocking pool of
    `max_connections`: a burst beyond it waits for a connection rather than failing (redis-py's
    default pool raises past 100, which would read as an outage)."""
    url = settings.url
    if url.startswith("memory://"):
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(),
                                        connection_pool_class=redis.BlockingConnectionPool,
                                        max_connections=settings.max_connections or BLOCKING_POOL,
                                        timeout=POOL_WAIT_SECONDS)
    common: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
    }
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(url, settings, common)
    if settings.cluster or url.startswith("redis+cluster://"):
        return RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1),
                                     max_connections=settings.max_connections or FAILING_POOL, **common)
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=settings.max_connections or BLOCKING_POOL,
                                                 timeout=POOL_WAIT_SECONDS, health_check_interval=10,
                                                 retry_on_timeout=False, **common)
    return redis.Redis(connection_pool=pool)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """`redis+sentinel://[:password@]host:port,host:port/service_name/db` → (sentinels, service, db, password)."""
    parsed = urlsplit(url)
    credentials, _, hosts = parsed.netloc.rpartition("@")
    password = unquote(credentials.partition(":")[2]) if credentials else None
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        sentinels.append((host or "127.0.0.1", int(port or 26379)))
    parts = [p for p in parsed.path.split("/") if p]
    if not parts:
        raise ValueError("a redis+sentinel:// URL names the service: redis+sentinel://host:port,.../service/db")
    return sentinels, parts[0], int(parts[1]) if len(parts) > 1 else 0, password or None


def _sentinel_client(url: str, settings: StoreSettings, common: dict[str, Any]) -> Any:
    """The primary of a Sentinel-monitored service. The pool asks the sentinels again after a connection
    error, so a promoted replica is found without a restart."""
    sentinels, service, db, password = parse_sentinel_url(url)
    # Untyped before redis-py 8, typed from it: the ignore holds for both.
    sentinel = Sentinel(sentinels, sentinel_kwargs=common, **common)  # type: ignore[no-untyped-call, unused-ignore]
    return sentinel.master_for(service, db=db, password=password,
                               max_connections=settings.max_connections or FAILING_POOL, retry_on_timeout=False)


# Query parameters whose values are credentials (password=, sentinel_password=, auth_token=, ...).
_CREDENTIAL_PARAM = re.compile(r"pass|secret|token|key|auth|cred", re.IGNORECASE)


def _userinfo_end(rest: str) -> int:
    """Where the userinfo of `rest` (a URL after its `scheme://`) ends: the last `@` that is not inside a
    `name=value` query. An operator may write a password with `@`, `/`, `?` or `#` unencoded (redis-py
    itself splits userinfo at the last `@`), so no character but that `@` is trusted to end it."""
    for at in (i for i in range(len(rest) - 1, -1, -1) if rest[i] == "@"):
        query = rest.find("?", 0, at)
        if query < 0 or "=" not in rest[query + 1:at]:
            return at
    return -1


def redact_url(url: str) -> str:
    """A store URL fit for a log: userinfo shown as `***`, credential query values as `***`, no fragment."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    at = _userinfo_end(rest)
    userinfo, rest = ("***@", rest[at + 1:]) if at >= 0 else ("", rest)
    path, has_query, query = rest.partition("#")[0].partition("?")
    params = []
    for param in query.split("&") if has_query else ():
        name, eq, _ = param.partition("=")
        params.append(f"{name}=***" if eq and _CREDENTIAL_PARAM.search(name) else param)
    return f"{scheme}://{userinfo}{path}" + (f"?{'&'.join(params)}" if has_query else "")


class Store:
    """The client plus the key prefix every embedgate key carries."""

    def __init__(self, settings: StoreSettings, client: Any | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else connect(settings)
        self.prefix = settings.prefix
        self._wired: tuple[Any, tuple[Wire, Wire] | None] = (None, None)  # a client and its wires (see _wires)
        # The request path's reads and its quota call, sent together when they meet in one loop turn.
        self.batched = Coalescer(lambda: self.client, lambda: self.wire, enabled=not self.is_cluster)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _wires(self) -> tuple[Wire, Wire] | None:
        """The store's own connections (proxy/wire.py), where it is one plain Redis: one for what requests
        wait on, one for the writes behind the answers. Replies on a connection come in order, so a write
        Redis holds (CLIENT PAUSE WRITE in a failover) would hold every read behind it on the same one. A
        new client (a test swaps one in) gets new wires."""
        client, wires = self._wired
        if client is not self.client:
            for wire in wires or ():
                wire.close()
            ahead = Wire.for_client(self.client)
            wires = None if ahead is None else (ahead, Wire(ahead.address, ahead.callbacks))
            self._wired = (self.client, wires)
        return wires

    @property
    def wire(self) -> Wire | None:
        """The connection for what requests wait on (the coalesced key reads, quota calls, cache reads)."""
        wires = self._wires()
        return wires[0] if wires else None

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """One round trip for many keys. On a cluster the keys spread over slots, so this is
        redis-py's non-atomic MGET (one MGET per node, sent concurrently)."""
        if not keys:
            return []
        if self.is_cluster:
            return list(await self.client.mget_nonatomic(list(keys)))
        return list(await self.batched.call("MGET", *keys))

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        """`SET key value EX ttl` for every item, in one round trip (not a transaction), behind the answer."""
        if items:
            await self.send_behind([("SET", key, value, "EX", ttl) for key, value in items.items()], transaction=False)

    async def send_behind(self, commands: Sequence[Command], transaction: bool = True) -> list[Any]:
        """Writes that run behind the answers (the cache's, usage), in one round trip, and their replies: on one
        Redis in MULTI ... EXEC unless told otherwise; on a cluster a plain batch split by slot (see
        `pipeline`). The first error reply raises."""
        wires = self._wires()
        if wires is not None:
            behind = wires[1]
            replies = await (behind.transaction(commands) if transaction else behind.send(commands))
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        pipe = self.pipeline(transaction=transaction)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    def team_key(self, team: str, *parts: str) -> str:
        """A key in the team's hash-tag slot: every key one quota script touches is one of these."""
        return self.key(f"{{t:{team}}}", *parts)

    def pipeline(self, transaction: bool = True) -> Any:
        """A pipeline: on one Redis a MULTI transaction unless told otherwise; on a cluster always a
        plain batch split by slot (a transaction cannot span slots)."""
        return self.client.pipeline() if self.is_cluster else self.client.pipeline(transaction=transaction)

    async def warm_up(self) -> None:
        """Learn a cluster's topology before traffic: redis-py's asyncio cluster client can fail
        commands that race its first initialisation. A store that is down is left for later."""
        if not self.is_cluster:
            return
        try:
            await self.client.initialize()
        except STORE_ERRORS as err:
            log.warning("store %s is not reachable at start-up: %s", self.describe(), err)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except STORE_ERRORS:
            return False

    async def aclose(self) -> None:
        for wire in self._wired[1] or ():
            wire.close()
        try:
            await self.client.aclose()
        except STORE_ERRORS:  # closing a dead connection is not worth a traceback
            pass

    def describe(self) -> str:
        """The URL without credentials, for logs."""
        return redact_url(self.settings.url)


class _Counter(Protocol):
    def labels(self, *values: str) -> Any: ...


class Outages:
    """Counts every failed store call in a metric, but logs an outage once when it starts and once
    when the store answers again, not once per request."""

    def __init__(self, counter: _Counter) -> None:
        self._counter = counter
        self.down = False

    def failed(self, operation: str, err: BaseException) -> None:
        self._counter.labels(operation).inc()
        if not self.down:
            self.down = True
            log.warning("store unavailable (%s: %s: %s); until it returns, quotas follow store.on_error "
                        "and keys are verified from the in-process cache", operation, type(err).__name__, err)

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            log.warning("store available again")
