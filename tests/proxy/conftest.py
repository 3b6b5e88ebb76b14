"""Fixtures for the proxy tests that need a caching gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.openai_upstream import FakeOpenAI
from testkit.servers import ThreadedServer
from tests.conftest import start_gateway
from tests.support.cache_setup import cache_settings


@pytest.fixture(params=["memory", "redis", "cluster"])
def caching_gateway(request: pytest.FixtureRequest, fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    """A gateway with the cache models (tests/support/cache_setup.py) on memory://, on the
    session's real Redis and on a three-node Redis Cluster (entries spread over its slots),
    under a store prefix of its own."""
    servers = {"redis": "redis_server", "cluster": "redis_cluster"}
    url = request.getfixturevalue(servers[request.param]).url if request.param in servers else "memory://"
    server = start_gateway(cache_settings(fake_openai, url))
    yield server
    server.stop()
