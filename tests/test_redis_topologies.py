"""The store beyond one Redis: a Sentinel-monitored primary that fails over under load, and the cache on a Redis
of its own that evicts under memory pressure while limits stay exact on the state Redis."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from testkit.openai_upstream import FakeOpenAI, expected_vector
from testkit.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer
from tests.conftest import running_gateway, upstream_config
from tests.support.admin import MASTER_KEY, admin, create_key, embed
from tests.support.redis_sentinel import NO_SENTINEL_REASON, REDIS_SENTINEL, SentinelGroup
from tests.support.replicas import burst


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    if REDIS_SERVER is None or REDIS_SENTINEL is None:
        pytest.skip(NO_SENTINEL_REASON)
    group = SentinelGroup().start()
    yield group
    group.stop()


def test_the_gateway_follows_a_sentinel_failover_without_restart(fake_openai: FakeOpenAI,
                                                                  sentinel_group: SentinelGroup) -> None:
    config = upstream_config(fake_openai, auth={"master_key": MASTER_KEY, "key_cache_ttl": 300},
                             store={"url": sentinel_group.url, "timeout": 0.5})
    with running_gateway(config) as gateway:
        key = create_key(gateway.url, limits={"rpm": 100_000})["key"]
        assert embed(gateway.url, key, input="before").status_code == 200
        sentinel_group.replicated()
        old = sentinel_group.primary.port
        statuses: Counter[int] = Counter()
        stop = threading.Event()

        def load() -> None:  # steady traffic through the switch
            i = 0
            while not stop.is_set():
                reply = embed(gateway.url, key, input=f"during {i}")
                statuses[reply.status_code] += 1
                if reply.status_code == 200:
                    vector = reply.json()["data"][0]["embedding"]
                    assert vector == pytest.approx(expected_vector(f"during {i}").tolist(), abs=1e-6)
                i += 1

        worker = threading.Thread(target=load)
        worker.start()
        sentinel_group.kill_primary()
        promoted = sentinel_group.wait_for_primary(not_port=old)
        stop.set()
        worker.join()
        assert promoted == sentinel_group.replica.port
        assert set(statuses) <= {200, 503}, statuses  # a 503 at worst, never a wrong answer or a 500
        after = _create_key_once_writable(gateway.url, limits={"rpm": 5})  # writes reach the new primary
        assert [embed(gateway.url, after["key"], input=f"after {i}").status_code for i in range(6)] == \
            [200] * 5 + [429]  # and limits count there again


def _create_key_once_writable(url: str, **body: object) -> dict[str, object]:
    """The sentinels name the new primary a moment before it takes writes (it is still leaving replica mode),
    and a pooled connection may still point at the dead one: the store answers 503 until then, which a client
    retries. Within a few seconds the write must land."""
    deadline = time.monotonic() + 10
    while True:
        resp = admin(url, "POST", "/admin/keys", json={"team": "search", **body})
        if resp.status_code != 503 or time.monotonic() > deadline:
            assert resp.status_code == 201, resp.text
            return resp.json()  # type: ignore[no-any-return]
        time.sleep(0.1)


def test_cache_on_its_own_evicting_redis_while_limits_stay_exact(fake_openai: FakeOpenAI) -> None:
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    state = RedisServer(extra_args=("--maxmemory-policy", "noeviction")).start()
    cache = RedisServer(extra_args=("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru")).start()
    try:
        config = upstream_config(fake_openai, auth={"master_key": MASTER_KEY},
                                 store={"url": state.url, "prefix": "st"},
                                 cache={"store": {"url": cache.url, "prefix": "ca"}})
        with running_gateway(config) as gateway:
            key = create_key(gateway.url, limits={"rpm": 40})["key"]
            fake_openai.dims = 4096  # 16 KiB entries: 40 requests of 16 fresh inputs write 10 MB into 2 MB
            statuses = Counter(embed(gateway.url, key, model="fake/wide", input=[f"r{i} {j}" for j in range(16)])
                               .status_code for i in range(50))
            assert statuses == Counter({200: 40, 429: 10})  # exactly the limit, whatever the cache evicted
            over = burst([gateway.url], key, {"model": "small", "input": "over"}, 5)
            assert over == Counter({(429, "rate_limit_exceeded"): 5})
        evicted = int(cache.client().info("stats")["evicted_keys"])
        assert evicted > 0
        assert cache.client().keys("st:*") == [] and state.client().keys("ca:*") == []
        assert state.client().keys("st:*") != []
    finally:
        state.stop()
        cache.stop()
