"""A real Redis stopped and started under running gateways: recently verified keys keep working,
unknown keys get 503, quotas follow store.on_error, and everything resumes without a restart."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from proxy.settings import Settings
from tests.conftest import start_gateway, upstream_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.admin import MASTER_KEY, NO_LIMIT_PAIR, create_key, embed, error_code, rate_limit_pair
from tests.support.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer
from tests.support.servers import ThreadedServer

OUTAGE_LOG = "store unavailable"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, persisting to an append-only file so a restart keeps the keys."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always")).start()
    yield server
    server.stop()


def _settings(fake: FakeOpenAI, redis: RedisServer, on_error: str, prefix: str) -> Settings:
    return upstream_settings(fake, auth={"master_key": MASTER_KEY, "key_cache_ttl": 300},
                             store={"url": redis.url, "prefix": prefix, "on_error": on_error, "timeout": 0.5})


@pytest.fixture
def gateways(fake_openai: FakeOpenAI, own_redis: RedisServer) -> Iterator[dict[str, ThreadedServer]]:
    prefix = f"out{secrets.token_hex(4)}"
    servers = {mode: start_gateway(_settings(fake_openai, own_redis, mode, prefix)) for mode in ("allow", "deny")}
    yield servers
    for server in servers.values():
        server.stop()


def test_a_redis_outage_and_its_end(gateways: dict[str, ThreadedServer], own_redis: RedisServer,
                                    caplog: pytest.LogCaptureFixture) -> None:
    allow, deny = gateways["allow"].url, gateways["deny"].url
    known = create_key(allow, limits={"rpm": 1000})["key"]
    assert [embed(url, known).status_code for url in (allow, deny)] == [200, 200]  # verified: now cached

    own_redis.stop()
    for _ in range(3):
        passed = embed(allow, known)
        assert passed.status_code == 200, passed.text  # cached key, quotas on_error: allow
        assert rate_limit_pair(passed, "requests") == NO_LIMIT_PAIR  # nothing was counted, nothing limits it
        unknown = embed(allow, "eg-never-seen-before-000000000000000")
        assert unknown.status_code == 503 and error_code(unknown) == "service_unavailable"
        assert embed(allow, "sk-not-even-our-format").status_code == 401  # needs no store to refuse
        denied = embed(deny, known)
        assert denied.status_code == 503 and "on_error: deny" in denied.json()["error"]["message"]
    assert sum(OUTAGE_LOG in r.getMessage() for r in caplog.records) == 2  # once per gateway, not per request
    metrics = httpx.get(allow + "/metrics").text
    assert 'embedgate_store_errors_total{operation="quota"} 3.0' in metrics

    own_redis.start()  # same port, same data
    resumed = embed(deny, known)
    assert resumed.status_code == 200, resumed.text
    assert resumed.headers["x-ratelimit-limit-requests"] == "1000"
    assert embed(allow, known).status_code == 200
    assert embed(allow, create_key(allow)["key"]).status_code == 200
    assert embed(allow, "eg-never-seen-before-000000000000000").status_code == 401
    assert sum("store available again" in r.getMessage() for r in caplog.records) == 2
