"""Config and probes shared by the cache tests and the benchmark's checks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aredis

from proxy.handlers import GATEWAY
from proxy.settings import Settings, parse_settings
from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import RedisServer
from testkit.servers import ThreadedServer
from tests.conftest import upstream_config
from tests.support.relay import CountingRelay


def cache_config(fake: FakeOpenAI, store_url: str = "memory://", **extra: Any) -> dict[str, Any]:
    """The fake-upstream config plus models that exercise the cache, on a store prefix of its own.

    All of them embed with the fake's `text-embedding-3-small` and say so (`same_space_as`), so
    they share one embedding space unless the model says otherwise (another revision, no cache)."""
    config = upstream_config(fake, store={"url": store_url, "prefix": f"t{uuid.uuid4().hex[:8]}"}, **extra)
    common = {"provider": "openai", "upstream_model": "text-embedding-3-small", "api_base": fake.url,  # type: ignore[attr-defined]
              "api_key": fake.api_key, "dimensions": fake.dims, "supports_dimensions": True,
              "same_space_as": "text-embedding-3-small"}
    config["models"] = [
        *config["models"],  # type: ignore[misc]
        {"name": "matryoshka-small", "matryoshka": True, **common},
        {"name": "small-rev2", "revision": "2", **common},
        {"name": "private", "cache": {"enabled": False}, **common},
    ]
    return config


def cache_settings(fake: FakeOpenAI, store_url: str = "memory://", **extra: Any) -> Settings:
    return parse_settings(cache_config(fake, store_url, **extra))


@contextmanager
def counted_round_trips(server: ThreadedServer, redis: RedisServer) -> Iterator[list[bytes]]:
    """Swap the gateway's store client for one that reaches `redis` through a relay that records each round
    trip (tests/support/relay.py), once the writes of earlier requests have landed (they run behind the
    answers). The client is a plain one, so the gateway's own connections (proxy/wire.py) carry its commands."""
    settle_writes(server)
    store = server.app[GATEWAY].store  # type: ignore[index]
    relay = CountingRelay(redis.port).start()
    original = store.client
    store.client = aredis.Redis.from_url(relay.url)
    try:
        yield relay.sends
    finally:
        counting, store.client = store.client, original
        server.call(counting.aclose)
        relay.stop()


def settle_writes(server: ThreadedServer) -> None:
    """Wait until the gateway's cache and usage writes, which run behind the answers, have landed."""
    gateway = server.app[GATEWAY]  # type: ignore[index]
    server.call(gateway.cache.settled)
    server.call(gateway.usage.settle)


@contextmanager
def writes_held(redis: RedisServer, milliseconds: int = 60_000) -> Iterator[None]:
    """Redis holds every write command it gets (CLIENT PAUSE ... WRITE) until the block ends or
    `milliseconds` pass, whichever comes first; reads are answered meanwhile."""
    client = redis.client()
    client.execute_command("CLIENT", "PAUSE", milliseconds, "WRITE")
    try:
        yield
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()
