"""The shared store: a real Redis (`redis://`, `rediss://`, `unix://`, Redis Cluster) or,
for `memory://`, the same commands and Lua scripts run in-process by fakeredis.

One code path, two backends: nothing above this module knows which one it talks to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from proxy.settings import StoreSettings

log = logging.getLogger("embedgate.store")

# What a store outage looks like from redis-py: connection errors, timeouts, cluster errors.
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def connect(settings: StoreSettings) -> Any:
    url = settings.url
    if url.startswith("memory://"):
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    common: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
    }
    if settings.cluster or url.startswith("redis+cluster://"):
        return RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1), **common)
    return redis.Redis.from_url(url, health_check_interval=10, retry_on_timeout=False, **common)


class Store:
    """The client plus the key prefix every embedgate key carries."""

    def __init__(self, settings: StoreSettings, client: Any | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else connect(settings)
        self.prefix = settings.prefix
        self.is_memory = settings.url.startswith("memory://")

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

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
        return list(await self.client.mget(list(keys)))

    async def set_many(self, items: Mapping[str, bytes], ttl: int) -> None:
        """`SET key value EX ttl` for every item, in one pipeline (not a transaction)."""
        if not items:
            return
        pipe = self.client.pipeline() if self.is_cluster else self.client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(key, value, ex=ttl)
        await pipe.execute()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except STORE_ERRORS:
            return False

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        except STORE_ERRORS:  # closing a dead connection is not worth a traceback
            pass

    def describe(self) -> str:
        """The URL without credentials, for logs."""
        url = self.settings.url
        if "@" in url:
            scheme, rest = url.split("://", 1)
            url = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url
