"""A real Redis stopped and started under running gateways: recently verified keys keep working,
unknown keys get 503, quotas follow store.on_error, and everything resumes without a restart."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from providers.tokenizers import cl100k
from proxy.settings import Settings, parse_settings
from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer
from testkit.servers import GatewayProcess, ThreadedServer
from tests.conftest import start_gateway, upstream_config
from tests.support.admin import MASTER_KEY, NO_LIMIT_PAIR, admin, create_key, embed, error_code, rate_limit_pair

OUTAGE_LOG = "store unavailable"
CLIENTS = 8


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, persisting to an append-only file so a restart keeps the keys."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always")).start()
    yield server
    server.stop()


def _config(fake: FakeOpenAI, redis: RedisServer, on_error: str, prefix: str, **store: Any) -> dict[str, Any]:
    return upstream_config(fake, auth={"master_key": MASTER_KEY, "key_cache_ttl": 300},
                           store={"url": redis.url, "prefix": prefix, "on_error": on_error, "timeout": 0.5, **store})


def _settings(fake: FakeOpenAI, redis: RedisServer, on_error: str, prefix: str) -> Settings:
    return parse_settings(_config(fake, redis, on_error, prefix))


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


def _load(url: str, key: str, seconds: float, clients: int) -> tuple[Counter[int], list[str]]:
    """`clients` threads sending one-input requests back to back for `seconds`: statuses counted, and
    the texts that were served."""
    statuses: Counter[int] = Counter()
    served: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = 0
            while time.monotonic() < deadline:
                text = f"client {n} sends text number {i}"
                status = http.post(url + "/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                                   json={"model": "text-embedding-3-small", "input": text}).status_code
                i += 1
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        served.append(text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, served


def _usage(url: str) -> dict[str, int]:
    return admin(url, "GET", "/admin/usage?team=search").json()["total"]  # type: ignore[no-any-return]


def test_usage_counts_every_request_served_through_a_redis_crash(fake_openai: FakeOpenAI,
                                                                 own_redis: RedisServer) -> None:
    """The operator's run: steady load, Redis SIGKILLed and restarted from its AOF mid-way. Every
    request served is in /admin/usage afterwards, and the team's day budget was charged for it."""
    gateway = start_gateway(_settings(fake_openai, own_redis, "allow", f"crash{secrets.token_hex(4)}"))
    try:
        key = create_key(gateway.url)["key"]
        crash = threading.Timer(1.5, own_redis.kill)
        back = threading.Timer(3.5, own_redis.start)
        crash.start()
        back.start()
        statuses, texts = _load(gateway.url, key, seconds=5.0, clients=CLIENTS)
        back.join()
        served = statuses[200]
        deadline = time.monotonic() + 15
        while _usage(gateway.url)["requests"] != served and time.monotonic() < deadline:
            time.sleep(0.2)
        usage = _usage(gateway.url)
        print(f"\nserved {served} ({dict(statuses)}), usage after the outage: {usage}")
        assert set(statuses) == {200}, statuses
        # A store call in flight at the instant of the crash may have run with its reply lost: it is
        # kept for the flush too, so at most one per client can count twice (README, "Running Redis").
        assert 0 <= usage["requests"] - served <= CLIENTS
        spent = own_redis.client().hgetall(
            next(iter(own_redis.client().scan_iter("*{t:search}:td:team"))))  # the team's day budget
        tokens = cl100k().count(texts)
        assert 0 <= sum(int(v) for v in spent.values()) - sum(tokens) <= CLIENTS * max(tokens)
    finally:
        gateway.stop()


def test_sigterm_during_an_outage_spills_and_the_next_start_replays(fake_openai: FakeOpenAI,
                                                                    own_redis: RedisServer, tmp_path: Path) -> None:
    prefix = f"spill{secrets.token_hex(4)}"
    config = tmp_path / "embedgate.yaml"
    config.write_text(yaml.safe_dump({**_config(fake_openai, own_redis, "allow", prefix,
                                                spill_dir=str(tmp_path / "spill")),
                                      "server": {"drain_grace": 0}}))
    first = GatewayProcess(config).wait_ready()
    key = create_key(first.url)["key"]
    assert embed(first.url, key).status_code == 200
    own_redis.stop()
    assert [embed(first.url, key, input=f"during {n}").status_code for n in range(5)] == [200] * 5
    first.stop()
    assert first.proc.returncode == 0 and "pending increments written to" in first.log()
    own_redis.start()
    second = GatewayProcess(config).wait_ready()
    try:
        deadline = time.monotonic() + 15
        while _usage(second.url)["requests"] != 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _usage(second.url)["requests"] == 6
        assert not list((tmp_path / "spill").iterdir())
    finally:
        second.stop()
