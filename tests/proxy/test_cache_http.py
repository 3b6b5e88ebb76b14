"""The cache end to end: a real gateway on a real port, the fake OpenAI upstream, memory:// or a
Redis this suite started."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from proxy.handlers import GATEWAY
from proxy.settings import parse_settings
from testkit.openai_upstream import FakeOpenAI, expected_vector
from testkit.redis_server import RedisServer
from testkit.servers import GatewayProcess, ThreadedServer, write_config
from tests.conftest import start_gateway
from tests.support.cache_setup import cache_config, cache_settings, counted_round_trips, settle_writes, writes_held
from tests.support.http import Reply, embed, embed_ok
from tests.support.waiting import wait_until


@pytest.fixture
def memory_gateway(fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    server = start_gateway(cache_settings(fake_openai))
    yield server
    server.stop()


def assert_vectors(reply: Reply, inputs: list[str], dims: int | None = None) -> None:
    for item, vector in zip(inputs, reply.vectors, strict=True):
        assert np.array_equal(vector, expected_vector(item, dims).astype(np.float32)), item


def metric(server: ThreadedServer, name: str, labels: dict[str, str]) -> float:
    value = server.app[GATEWAY].metrics.registry.get_sample_value(name, labels)  # type: ignore[index]
    return value or 0.0


def test_partial_hits_send_only_misses(caching_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    gateway = caching_gateway
    first = embed_ok(gateway.url, ["alpha", "beta"])
    assert first.cache == "miss"
    second = embed_ok(gateway.url, ["gamma", "beta", "alpha", "gamma"])
    assert second.cache == "partial"
    assert_vectors(second, ["gamma", "beta", "alpha", "gamma"])
    third = embed_ok(gateway.url, ["alpha", "gamma"])
    assert third.cache == "hit"
    assert fake_openai.inputs_seen == ["alpha", "beta", "gamma"]
    assert metric(gateway, "embedgate_cache_lookups_total", {"model": "text-embedding-3-small", "result": "hit"}) == 4


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_a_hit_is_byte_identical_to_a_miss(memory_gateway: ThreadedServer, fake_openai: FakeOpenAI,
                                           encoding_format: str) -> None:
    inputs = ["one fish", "two fish", [101, 102, 103], "one fish"]
    miss = embed_ok(memory_gateway.url, inputs, encoding_format=encoding_format)
    hit = embed_ok(memory_gateway.url, inputs, encoding_format=encoding_format)
    fresh = embed_ok(memory_gateway.url, inputs, encoding_format=encoding_format,
                     headers={"Cache-Control": "no-cache"})
    assert (miss.cache, hit.cache, fresh.cache) == ("miss", "hit", "miss")
    assert hit.body == miss.body == fresh.body
    assert len(fake_openai.received) == 2


def test_float_and_base64_share_one_entry(memory_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    as_float = embed_ok(memory_gateway.url, ["shared text"], encoding_format="float")
    as_base64 = embed_ok(memory_gateway.url, ["shared text"], encoding_format="base64")
    assert (as_float.cache, as_base64.cache) == ("miss", "hit")
    assert as_base64.vectors[0].tobytes() == as_float.vectors[0].tobytes()
    assert as_base64.prompt_tokens == as_float.prompt_tokens
    assert len(fake_openai.received) == 1


def test_usage_counts_the_whole_request(memory_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    # The fake counts one token per word; the gateway keeps each input's count with its entry.
    embed_ok(memory_gateway.url, ["three word text"])
    reply = embed_ok(memory_gateway.url, ["three word text", "two words", "three word text"])
    assert reply.cache == "partial"
    assert reply.prompt_tokens == 3 + 2 + 3
    assert reply.json()["usage"]["total_tokens"] == 8


def test_cache_control_no_cache_and_no_store(memory_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    url = memory_gateway.url
    assert embed_ok(url, ["ctl"], headers={"Cache-Control": "no-store"}).cache == "miss"
    assert embed_ok(url, ["ctl"]).cache == "miss"  # the no-store request wrote nothing
    assert embed_ok(url, ["ctl"]).cache == "hit"
    assert embed_ok(url, ["ctl"], headers={"Cache-Control": "no-cache"}).cache == "miss"
    assert embed_ok(url, ["ctl"], headers={"Cache-Control": "no-cache, no-store"}).cache == "miss"
    assert fake_openai.inputs_seen == ["ctl"] * 4


def test_a_model_can_opt_out(memory_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    for _ in range(2):
        reply = embed_ok(memory_gateway.url, ["secret", "secret"], model="private")
        assert reply.cache == "bypass"
        assert_vectors(reply, ["secret", "secret"])
    assert fake_openai.inputs_seen == ["secret", "secret"] * 2  # no cache, no dedupe: passed through as sent


def test_models_share_a_space_unless_the_revision_differs(memory_gateway: ThreadedServer,
                                                          fake_openai: FakeOpenAI) -> None:
    url = memory_gateway.url
    assert embed_ok(url, ["rev"]).cache == "miss"
    assert embed_ok(url, ["rev"], model="small").cache == "hit"  # an alias
    assert embed_ok(url, ["rev"], model="matryoshka-small").cache == "hit"  # same provider, model, revision
    assert embed_ok(url, ["rev"], model="small-rev2").cache == "miss"  # revision bumped: a new space
    assert embed_ok(url, ["rev"], model="small-rev2").cache == "hit"
    assert embed_ok(url, ["rev"], dimensions=16).cache == "miss"  # another output size: another entry
    assert len(fake_openai.received) == 3


def test_matryoshka_serves_fewer_dimensions_from_the_full_vector(memory_gateway: ThreadedServer,
                                                                 fake_openai: FakeOpenAI) -> None:
    url = memory_gateway.url
    embed_ok(url, ["nested", "doll"], model="matryoshka-small")
    short = embed_ok(url, ["doll", "nested"], model="matryoshka-small", dimensions=16)
    assert short.cache == "hit"
    assert len(fake_openai.received) == 1
    for item, vector in zip(["doll", "nested"], short.vectors, strict=True):
        assert vector.shape == (16,)
        np.testing.assert_allclose(vector, expected_vector(item, 16), atol=1e-6)
    # The same full vector, asked for through a model not marked matryoshka: a miss.
    assert embed_ok(url, ["doll"], dimensions=16).cache == "miss"
    assert fake_openai.received[-1].dimensions == 16


def test_concurrent_identical_misses_make_one_upstream_call(memory_gateway: ThreadedServer,
                                                            fake_openai: FakeOpenAI) -> None:
    fake_openai.delay = 0.3
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: embed_ok(memory_gateway.url, ["stampede"]), range(6)))
    assert len(fake_openai.received) == 1
    assert {r.body for r in replies} == {replies[0].body}
    assert_vectors(replies[0], ["stampede"])


def test_a_failed_upstream_call_writes_nothing(memory_gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(400)
    assert embed(memory_gateway.url, ["unlucky"]).status == 400
    assert embed_ok(memory_gateway.url, ["unlucky"]).cache == "miss"
    assert embed_ok(memory_gateway.url, ["unlucky"]).cache == "hit"


def test_one_read_and_one_write_per_request(fake_openai: FakeOpenAI, redis_server: RedisServer) -> None:
    server = start_gateway(cache_settings(fake_openai, redis_server.url))
    try:
        inputs = [f"round trip {i}" for i in range(20)]
        with counted_round_trips(server, redis_server) as sends:
            assert embed_ok(server.url, inputs).cache == "miss"
            settle_writes(server)  # the write runs behind the answer
            assert len(sends) == 2
            assert sends[0].count(b"\r\nMGET\r\n") == 1
            assert sends[1].count(b"\r\nSET\r\n") == 20 and sends[1].count(b"\r\nEX\r\n") == 20
            sends.clear()
            assert embed_ok(server.url, inputs[::-1]).cache == "hit"
            assert len(sends) == 1
            sends.clear()
            assert embed_ok(server.url, [*inputs, "new one", "new two"], model="matryoshka-small",
                            dimensions=8).cache == "partial"  # 20 cut from full vectors, 2 new
            settle_writes(server)
            assert len(sends) == 2  # the matryoshka read asks for both sizes in one MGET
            assert sends[0].count(b"\r\nMGET\r\n") == 1 and sends[1].count(b"\r\nSET\r\n") == 2
    finally:
        server.stop()


def test_entries_expire_after_their_ttl(fake_openai: FakeOpenAI, redis_server: RedisServer) -> None:
    server = start_gateway(cache_settings(fake_openai, redis_server.url, cache={"ttl": 123}))
    try:
        embed_ok(server.url, ["ephemeral"])
        settle_writes(server)
        client = redis_server.client()
        keys = client.keys(f"{server.app[GATEWAY].store.prefix}:emb:*")  # type: ignore[index]
        assert len(keys) == 1 and 120 <= client.ttl(keys[0]) <= 123
        assert len(client.get(keys[0])) == 8 + 4 * fake_openai.dims  # header + raw float32, not JSON
        client.close()
    finally:
        server.stop()


def test_store_outage_bypasses_the_cache_then_recovers(fake_openai: FakeOpenAI) -> None:
    redis = RedisServer().start()
    server = start_gateway(cache_settings(fake_openai, redis.url))
    try:
        assert embed_ok(server.url, ["durable"]).cache == "miss"
        assert embed_ok(server.url, ["durable"]).cache == "hit"
        redis.stop()
        for _ in range(3):
            reply = embed_ok(server.url, ["durable", "during outage"])
            assert reply.cache == "bypass"
            assert_vectors(reply, ["durable", "during outage"])
        assert metric(server, "embedgate_store_errors_total", {"operation": "cache_read"}) >= 1
        redis = RedisServer(port=redis.port).start()
        deadline = time.monotonic() + 10
        while (status := embed_ok(server.url, ["after"]).cache) == "bypass" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == "miss"
        assert embed_ok(server.url, ["after"]).cache == "hit"
    finally:
        server.stop()
        redis.stop()


def test_two_gateway_processes_share_hits(tmp_path: Path, fake_openai: FakeOpenAI,
                                          redis_server: RedisServer) -> None:
    settings = cache_config(fake_openai, redis_server.url)
    config = write_config(settings, tmp_path / "embedgate.yaml")
    replicas = [GatewayProcess(config), GatewayProcess(config)]
    client = redis_server.client()
    try:
        for replica in replicas:
            replica.wait_ready()
        first = embed_ok(replicas[0].url, ["replicated", "twice"])
        # The first replica writes behind its answer: the other finds the entries once they are in Redis.
        wait_until(lambda: len(client.keys(f"{settings['store']['prefix']}:emb:*")) == 2)
        second = embed_ok(replicas[1].url, ["twice", "replicated"])
        assert (first.cache, second.cache) == ("miss", "hit")
        assert_vectors(second, ["twice", "replicated"])
        assert fake_openai.inputs_seen == ["replicated", "twice"]
    finally:
        client.close()
        for replica in replicas:
            replica.stop()


@pytest.fixture
def held_redis_gateway(fake_openai: FakeOpenAI) -> Iterator[tuple[ThreadedServer, RedisServer]]:
    """A gateway on a Redis of its own (the test pauses its writes), whose store calls wait for a
    held write rather than time out."""
    redis = RedisServer().start()
    config = cache_config(fake_openai, redis.url)
    config["store"]["timeout"] = 60
    server = start_gateway(parse_settings(config))
    yield server, redis
    server.stop()
    redis.stop()


def test_an_answer_does_not_wait_for_its_cache_write(held_redis_gateway: tuple[ThreadedServer, RedisServer],
                                                     fake_openai: FakeOpenAI) -> None:
    server, redis = held_redis_gateway
    client = redis.client()
    entries = f"{server.app[GATEWAY].store.prefix}:emb:*"  # type: ignore[index]
    with writes_held(redis):
        assert embed_ok(server.url, ["written behind"]).cache == "miss"  # answered while Redis holds the SET
        assert client.keys(entries) == []
        # The same input again before its write lands: a hit from memory, no second upstream call.
        again = embed_ok(server.url, ["fresh", "written behind"])
        assert again.cache == "partial"
        assert_vectors(again, ["fresh", "written behind"])
        assert fake_openai.inputs_seen == ["written behind", "fresh"]
        hits = metric(server, "embedgate_cache_lookups_total", {"model": "text-embedding-3-small", "result": "hit"})
        assert hits == 1
    settle_writes(server)
    assert len(client.keys(entries)) == 2
    client.close()


def test_shutdown_lands_the_writes_still_under_way(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """SIGTERM right after an answer whose write Redis still holds: the process exits only once it landed."""
    redis = RedisServer().start()
    settings = cache_config(fake_openai, redis.url)
    settings["store"]["timeout"] = 60  # the held SET waits, it does not time out
    gateway = GatewayProcess(write_config(settings, tmp_path / "embedgate.yaml")).wait_ready()
    client = redis.client()
    try:
        # Held for 2 s, then unpaused by Redis itself. A process that exited without waiting would
        # close its connection, and Redis drops a held command whose client is gone.
        with writes_held(redis, milliseconds=2000):
            assert embed_ok(gateway.url, ["last request"]).cache == "miss"
            gateway.stop()
        assert gateway.proc.returncode == 0
        assert len(client.keys(f"{settings['store']['prefix']}:emb:*")) == 1
    finally:
        gateway.stop()
        client.close()
        redis.stop()
