"""Resilient dispatch end to end: a real gateway in front of two fake OpenAI deployments, with faults
injected (500s, 429 + Retry-After, timeouts, a deployment that is down, a hung-up client)."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from proxy.handlers import GATEWAY
from testkit.openai_upstream import FakeOpenAI, expected_vector
from testkit.servers import ThreadedServer, free_port
from tests.conftest import running_gateway, serving_openai
from tests.fakes.vendor import other_origin
from tests.support.admin import MASTER_KEY, create_key, embed
from tests.support.http import Reply, embed_ok
from tests.support.http import embed as post_embed

DEPLOYMENT = "x-embedgate-deployment"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "breaker_failures": 2, "breaker_cooldown": 0.5}


@pytest.fixture
def east_west() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with serving_openai() as east, serving_openai() as west:
        yield east, west


def deployment(fake: FakeOpenAI, name: str, **options: Any) -> dict[str, Any]:
    return {"provider": "openai", "name": name, "api_base": fake.url, "api_key": fake.api_key,
            "upstream_model": "text-embedding-3-small", **options}


def config(*deployments: dict[str, Any], cache: bool = False, **extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "multi", "dimensions": 64, "deployments": list(deployments)}],
            "dispatch": {**FAST, **extra.pop("dispatch", {})}, "cache": {"enabled": cache}, **extra}


def assert_vectors(reply: Reply, inputs: list[str]) -> None:
    for item, vector in zip(inputs, reply.vectors, strict=True):
        np.testing.assert_array_equal(vector, expected_vector(item).astype(np.float32))


def metric(server: ThreadedServer, name: str, **labels: str) -> float:
    return server.app[GATEWAY].metrics.registry.get_sample_value(name, labels) or 0.0  # type: ignore[index]


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_failover_to_the_healthy_deployment_then_the_breaker_opens_and_closes(
        east_west: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    east, west = east_west
    east.fail_next(500, 100)
    with running_gateway(config(deployment(east, "east"), deployment(west, "west"))) as gw:
        for i in range(6):
            reply = embed_ok(gw.url, [f"text {i}", f"more {i}"], model="multi")
            assert reply.headers[DEPLOYMENT] == "west"
            assert_vectors(reply, [f"text {i}", f"more {i}"])
        assert len(east._failures) == 98  # two failures opened east's breaker: nothing more was sent there
        assert metric(gw, "embedgate_upstream_requests_total", provider="openai", deployment="east",
                      outcome="unavailable") == 2
        assert (metric(gw, "embedgate_circuit_open", deployment="east"),
                metric(gw, "embedgate_circuit_open", deployment="west")) == (1, 0)
        east._failures.clear()  # east recovers; after the cool-down a probe finds out and closes the breaker
        time.sleep(FAST["breaker_cooldown"] + 0.1)
        served_by = {embed_ok(gw.url, [f"later {i}"], model="multi").headers[DEPLOYMENT] for i in range(4)}
        assert served_by == {"east", "west"}
        assert metric(gw, "embedgate_circuit_open", deployment="east") == 0


def test_429_with_retry_after_is_retried_transparently(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(429, 1, headers={"Retry-After": "1"})
    with running_gateway(config(deployment(fake_openai, "only"))) as gw:
        reply = embed_ok(gw.url, ["patience"], model="multi")
        assert_vectors(reply, ["patience"])
        assert metric(gw, "embedgate_upstream_retries_total", deployment="only") == 1
        assert metric(gw, "embedgate_upstream_requests_total", provider="openai", deployment="only",
                      outcome="rate_limited") == 1


def test_timeouts_resets_and_a_down_deployment_fail_over(east_west: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    east, west = east_west
    east.delay = 5.0
    down = {"provider": "openai", "name": "down", "api_base": f"http://127.0.0.1:{free_port()}/v1"}
    cfg = config(deployment(east, "slow", timeout=0.2), down, deployment(west, "west"),
                 dispatch={"max_attempts": 5})
    cfg["models"][0]["strategy"] = "least_inflight"
    with running_gateway(cfg) as gw:
        for i in range(3):
            reply = embed_ok(gw.url, [f"go {i}"], model="multi")
            assert reply.headers[DEPLOYMENT] == "west"
            assert_vectors(reply, [f"go {i}"])
        assert metric(gw, "embedgate_upstream_requests_total", provider="openai", deployment="slow",
                      outcome="timeout") >= 1
        assert metric(gw, "embedgate_upstream_requests_total", provider="openai", deployment="down",
                      outcome="unavailable") >= 1


def test_the_overall_deadline_answers_504(fake_openai: FakeOpenAI) -> None:
    fake_openai.delay = 10.0
    with running_gateway(config(deployment(fake_openai, "slow"), dispatch={"deadline": 0.5})) as gw:
        reply = embed(gw.url, None, model="multi", input="late")
    assert reply.status_code == 504 and reply.json()["error"]["code"] == "upstream_timeout"


def test_failures_refund_and_never_show_the_vendor_key(east_west: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    east, west = east_west
    for fake in east_west:
        fake.fail_next(500, 10, body={"error": {"message": f"internal error for key {fake.api_key}"}})
    cfg = config(deployment(east, "east"), deployment(west, "west"), auth={"master_key": MASTER_KEY})
    with running_gateway(cfg) as gw:
        key = create_key(gw.url, limits={"tpm": 1000})["key"]
        failed = embed(gw.url, key, model="multi", input="a b c")
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_unavailable"
        assert east.api_key not in failed.text and west.api_key not in failed.text
        for fake in east_west:
            fake._failures.clear()
        ok = embed(gw.url, key, model="multi", input="a b c")
        assert ok.status_code == 200
        spent = ok.json()["usage"]["prompt_tokens"]
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 1000 - spent  # the failure was refunded


def test_a_client_that_hangs_up_cancels_its_upstream_call_and_is_refunded(fake_openai: FakeOpenAI) -> None:
    fake_openai.delay = 5.0
    cfg = config(deployment(fake_openai, "slow"), auth={"master_key": MASTER_KEY})
    with running_gateway(cfg) as gw:
        key = create_key(gw.url, limits={"tpm": 1000})["key"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + "/v1/embeddings", json={"model": "multi", "input": "never mind"},
                       headers={"Authorization": f"Bearer {key}"}, timeout=0.5)
        eventually(lambda: fake_openai.cancelled == 1)
        fake_openai.delay = 0.0
        ok = embed(gw.url, key, model="multi", input="x")
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) == 1000 - ok.json()["usage"]["prompt_tokens"]


def test_one_requests_bad_input_does_not_fail_another_sharing_its_flight(fake_openai: FakeOpenAI) -> None:
    """Issue 11 item 3: B joins A's in-flight call for "popular"; A's "bad" sinks A's batch, not B."""
    fake_openai.refuse = {"bad"}
    fake_openai.delay = 0.5
    with running_gateway(config(deployment(fake_openai, "only"), cache=True)) as gw:
        replies: dict[str, Reply] = {}
        first = threading.Thread(target=lambda: replies.update(a=post_embed(gw.url, ["popular", "bad"],
                                                                            model="multi")))
        first.start()
        eventually(lambda: len(fake_openai._failures) == 0 and fake_openai.cancelled == 0 and bool(
            gw.app[GATEWAY].cache._flights))  # type: ignore[index]
        replies["b"] = post_embed(gw.url, ["popular"], model="multi")
        first.join()
    assert replies["b"].status == 200
    assert_vectors(replies["b"], ["popular"])
    error = replies["a"].json()["error"]
    assert replies["a"].status == 400 and error["param"] == "input[1]"  # the client's own index


def test_a_pattern_never_reads_or_writes_a_configured_models_entries(
        east_west: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    """Issue 11 item 1: `bge-small` (a TEI server) and `tei/*` (another server) name the same upstream model."""
    tei, other = east_west
    cfg = {"cache": {"enabled": True}, "models": [
        {"name": "bge-small", "provider": "openai", "upstream_model": "BAAI/bge-small-en-v1.5", "api_base": tei.url,
         "api_key": tei.api_key},
        {"name": "tei/*", "provider": "openai", "api_base": other.url, "api_key": other.api_key}]}
    with running_gateway(cfg) as gw:
        assert embed_ok(gw.url, ["x"], model="bge-small").cache == "miss"
        assert embed_ok(gw.url, ["x"], model="tei/BAAI/bge-small-en-v1.5").cache == "miss"
        assert embed_ok(gw.url, ["y"], model="tei/BAAI/bge-small-en-v1.5", headers={"Cache-Control": "no-cache"})
        assert embed_ok(gw.url, ["y"], model="bge-small").cache == "miss"
    assert tei.inputs_seen == ["x", "y"] and other.inputs_seen == ["x", "y"]


@pytest.mark.parametrize("scope", ["team", "global"])
def test_cache_entries_are_per_team_unless_global(fake_openai: FakeOpenAI, scope: str) -> None:
    """Issue 11 item 9: with `no-store`, a hit would tell another team's key holder what was embedded."""
    cfg = config(deployment(fake_openai, "only"), cache=True, auth={"master_key": MASTER_KEY})
    cfg["cache"]["scope"] = scope
    with running_gateway(cfg) as gw:
        mine, theirs = create_key(gw.url, team="finance")["key"], create_key(gw.url, team="sales")["key"]
        assert embed(gw.url, mine, model="multi", input="merger with acme").headers["x-embedgate-cache"] == "miss"
        probe = httpx.post(gw.url + "/v1/embeddings", json={"model": "multi", "input": "merger with acme"},
                           headers={"Authorization": f"Bearer {theirs}", "Cache-Control": "no-store"})
    assert probe.headers["x-embedgate-cache"] == ("miss" if scope == "team" else "hit")


def test_uncharged_hits_refund_what_was_charged_for_them(fake_openai: FakeOpenAI) -> None:
    """Issue 11 item 8: the backend counts 5 tokens a word; the gateway charged its own cl100k count."""
    fake_openai.token_factor = 5
    cfg = config(deployment(fake_openai, "only"), cache=True, auth={"master_key": MASTER_KEY})
    cfg["cache"]["charge_hits"] = False
    with running_gateway(cfg) as gw:
        key = create_key(gw.url, limits={"tpm": 1000})["key"]
        embed(gw.url, key, model="multi", input="alpha beta")  # 2 tokens charged; 10 by the backend's count
        second = embed(gw.url, key, model="multi", input=["alpha beta", "gamma delta"])  # charged 4, 2 are a hit
        assert second.headers["x-embedgate-cache"] == "partial"
        third = embed(gw.url, key, model="multi", input="epsilon")
    charged = 2 + (4 - 2) + 1  # each request's cl100k count, less the hit's own 2 tokens
    assert int(third.headers["x-ratelimit-remaining-tokens"]) == 1000 - charged


def base64_of(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


UNIT = [0.125] * 64  # the native size; 64 * 0.125**2 = 1: a unit vector


def one(embedding: Any, **usage: Any) -> dict[str, Any]:
    return {"data": [{"index": 0, "embedding": embedding}], **({"usage": usage} if usage else {})}


NONSENSE = {
    "negative usage": one(UNIT, prompt_tokens=-5),
    "boolean usage": one(UNIT, prompt_tokens=True),
    "NaN": one(base64_of([float("nan"), *UNIT[1:]])),
    "infinity": one(base64_of([float("inf"), *UNIT[1:]])),
    "zero width": one([]),
    "wrong width": one(UNIT[:2]),
}


@pytest.mark.parametrize("case", sorted(NONSENSE))
def test_nonsense_from_upstream_is_a_502_never_cached(fake_openai: FakeOpenAI, case: str) -> None:
    """Issue 11 item 10: validated at the provider boundary; the client is refunded; nothing is cached."""
    fake_openai.fail_next(200, 1, body=NONSENSE[case])
    cfg = config(deployment(fake_openai, "only", upstream_encoding="float"), cache=True,
                 auth={"master_key": MASTER_KEY}, dispatch={"max_attempts": 1})
    with running_gateway(cfg) as gw:
        key = create_key(gw.url, limits={"tpm": 1000})["key"]
        bad = embed(gw.url, key, model="multi", input="hello")
        assert bad.status_code == 502 and bad.json()["error"]["code"] == "upstream_bad_response", bad.text
        good = embed(gw.url, key, model="multi", input="hello")
    assert good.status_code == 200 and good.headers["x-embedgate-cache"] == "miss"
    assert int(good.headers["x-ratelimit-remaining-tokens"]) == 1000 - good.json()["usage"]["prompt_tokens"]


GARBLED = {
    "not JSON": b"<html>502 Bad Gateway</html>",
    "cut short inside a row": b'{"data": [{"index": 0, "embedding": "AAAAPgAAAD4AAAA',
    "a row not base64": b'{"data": [{"index": 0, "embedding": "AAAA@@@@"}]}',
    "a decoy key": b'{"usage": {"x\\"embedding": "AAAAPg=="}, "data": [{"embedd\\u0069ng": ""}]}',
}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_a_garbled_base64_answer_is_a_502(fake_openai: FakeOpenAI, case: str) -> None:
    """Read from its raw bytes (providers/openai.py parse_answer), a broken answer is still the backend's fault."""
    fake_openai.fail_next(200, 1, body=GARBLED[case])
    with running_gateway(config(deployment(fake_openai, "only"), dispatch={"max_attempts": 1})) as gw:
        reply = embed(gw.url, None, model="multi", input="hello", encoding_format="base64")
    assert (reply.status_code, reply.json()["error"]["code"]) == (502, "upstream_bad_response"), reply.text


def test_a_pretty_printed_base64_answer_with_escapes_is_read(fake_openai: FakeOpenAI) -> None:
    """Spaces and newlines around the key (OpenAI's own layout) and an escaped "/" (some servers write one)."""
    rows = [[1.5, -0.7, 0.9] + [0.0] * 61, [0.125] * 64]
    data = [{"object": "embedding", "index": i, "embedding": base64_of(row)} for i, row in enumerate(rows)]
    raw = json.dumps({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 4}}, indent=2)
    assert "/" in raw
    fake_openai.fail_next(200, 1, body=raw.replace("/", "\\/").encode())
    with running_gateway(config(deployment(fake_openai, "only"))) as gw:
        reply = embed_ok(gw.url, ["first", "second"], model="multi")
    np.testing.assert_array_equal(reply.vectors, np.asarray(rows, np.float32))
    assert reply.json()["usage"]["prompt_tokens"] == 4


@pytest.mark.parametrize("retry_after", ["nan", "inf", "-3", "soon"])
def test_a_nonsense_retry_after_is_ignored(fake_openai: FakeOpenAI, retry_after: str) -> None:
    fake_openai.fail_next(429, 1, headers={"Retry-After": retry_after})
    with running_gateway(config(deployment(fake_openai, "only"))) as gw:
        assert_vectors(embed_ok(gw.url, ["calm"], model="multi"), ["calm"])


def test_token_ids_reach_only_models_that_read_cl100k(fake_openai: FakeOpenAI) -> None:
    """Issue 11 item 2: the tokenizer is the model's, not the host's."""
    ids = [15339, 1917]  # "hello world" in cl100k
    cfg = {"models": [
        {"name": "small", "provider": "openai", "upstream_model": "text-embedding-3-small", "api_base": fake_openai.url,
         "api_key": fake_openai.api_key},
        {"name": "bge", "provider": "openai", "upstream_model": "BAAI/bge-small-en-v1.5", "api_base": fake_openai.url,
         "api_key": fake_openai.api_key},
        {"name": "bge-ids", "provider": "openai", "upstream_model": "BAAI/bge-small-en-v1.5", "token_ids": "pass",
         "api_base": fake_openai.url, "api_key": fake_openai.api_key}]}
    with running_gateway(cfg) as gw:
        for model in ("small", "bge", "bge-ids"):
            embed_ok(gw.url, [ids], model=model)
    assert [r.inputs for r in fake_openai.received] == [[ids], ["hello world"], [ids]]


@pytest.mark.parametrize(("status", "answer", "code", "calls"), [
    (402, 502, "upstream_payment_required", 1),
    (408, 504, "upstream_timeout", 2),
    (409, 502, "upstream_unavailable", 2)])
def test_upstream_402_408_409_are_not_the_clients_fault(fake_openai: FakeOpenAI, status: int, answer: int, code: str,
                                                        calls: int) -> None:
    """Issue 11 item 12: billing is the operator's problem (not retried); a timeout or conflict is retried."""
    fake_openai.fail_next(status, 5)
    with running_gateway(config(deployment(fake_openai, "only"), dispatch={"max_attempts": 2})) as gw:
        reply = embed(gw.url, None, model="multi", input="not my fault")
    assert (reply.status_code, reply.json()["error"]["code"]) == (answer, code), reply.text
    assert 5 - len(fake_openai._failures) == calls


TENANT_TOKEN = "tenant-secret-token-5678"  # a custom header's value, as Azure's api-key or a proxy's token


def with_tenant_header(fake: FakeOpenAI) -> dict[str, Any]:
    return config(deployment(fake, "only", headers={"x-tenant-token": TENANT_TOKEN}), dispatch={"max_attempts": 1})


def test_configured_header_values_are_scrubbed_from_relayed_errors(fake_openai: FakeOpenAI) -> None:
    """Issue 11 item 11: every configured header value is a secret, like the api_key."""
    echo = f"bad request from tenant {TENANT_TOKEN} with key {fake_openai.api_key}"
    fake_openai.fail_next(400, 1, body={"error": {"message": echo, "param": None}})
    with running_gateway(with_tenant_header(fake_openai)) as gw:
        reply = embed(gw.url, None, model="multi", input="hello")
    assert reply.status_code == 400 and "bad request from tenant ***" in reply.json()["error"]["message"]
    assert TENANT_TOKEN not in reply.text and fake_openai.api_key not in reply.text


@pytest.mark.parametrize("status", [302, 307, 308])
def test_an_upstream_redirect_is_not_followed(fake_openai: FakeOpenAI, status: int) -> None:
    """Issue 11 item 11: following one would send the configured headers to another origin."""
    with other_origin() as elsewhere:
        fake_openai.fail_next(status, 1, body={}, headers={"Location": elsewhere.url + "/v1/embeddings"})
        with running_gateway(with_tenant_header(fake_openai)) as gw:
            reply = embed(gw.url, None, model="multi", input="hello")
        assert elsewhere.seen == []
    assert (reply.status_code, reply.json()["error"]["code"]) == (502, "upstream_bad_response"), reply.text
    assert "redirect" in reply.json()["error"]["message"]
