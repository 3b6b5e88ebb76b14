"""Fixtures for the proxy tests that need a caching gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import start_gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.cache_setup import cache_settings
from tests.support.servers import ThreadedServer


@pytest.fixture(params=["memory", "redis"])
def caching_gateway(request: pytest.FixtureRequest, fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    """A gateway with the cache models (tests/support/cache_setup.py) on memory:// and on the
    session's real Redis, under a store prefix of its own."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else "memory://"
    server = start_gateway(cache_settings(fake_openai, url))
    yield server
    server.stop()
