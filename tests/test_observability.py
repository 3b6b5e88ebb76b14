"""Operations, end to end on `embedgate serve` processes: after a known burst of traffic `/metrics` shows exactly
the counts it must (with one worker and with two), labels stay bounded, `/metrics` moves to its own port
behind a token, and every request leaves one log line with its request id and nothing secret."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import RedisServer
from testkit.servers import free_port, gateway_process
from tests.conftest import upstream_config
from tests.support.metrics import Samples, labelled, parse, scrape_text, series, value

KEY = "sk-alpha-observability-0123456789"  # a static key of team alpha, no limits
LIMITED = "sk-beta-one-per-minute-0123456789"  # a static key of team beta: one request a minute
MODEL = "text-embedding-3-small"
DEPLOYMENT = f"{MODEL}/openai"
SECRETS_AND_TEXTS = (KEY, LIMITED, "Bearer", "alpha one", "alpha two", "alpha three", "beta one", "beta two",
                     "no-such-model", FakeOpenAI.api_key)


def burst_config(fake: FakeOpenAI, redis_url: str, **extra: Any) -> dict[str, Any]:
    """Production shape: API keys, an rpm limit and the cache, all on one Redis the workers share."""
    return upstream_config(
        fake, store={"url": redis_url, "prefix": f"t{secrets.token_hex(4)}"},
        auth={"keys": [{"key": KEY, "team": "alpha"}, {"key": LIMITED, "team": "beta", "limits": {"rpm": 1}}]},
        dispatch={"backoff_base": 0.01, "backoff_max": 0.02}, **extra)


def post(url: str, body: dict[str, Any], key: str | None = KEY, request_id: str | None = None) -> httpx.Response:
    """One request on a fresh connection (with several workers the kernel picks one per connection)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if request_id is not None:
        headers["x-request-id"] = request_id
    return httpx.post(url + "/v1/embeddings", json=body, headers=headers, timeout=30)


def burst(url: str, fake: FakeOpenAI) -> list[httpx.Response]:
    """Misses, a partial hit, a hit, a 404, two 400s (a malformed body: its model is not known; a `dimensions`
    the model cannot give), a 429 (team beta's second request in a minute) and a 401; the first upstream call
    fails once (500) and is retried. Cache entries are per team: beta's first text is a miss."""
    fake.fail_next(500)
    replies = [
        post(url, {"model": MODEL, "input": ["alpha one"]}),
        post(url, {"model": MODEL, "input": ["alpha one", "alpha two"]}),
        post(url, {"model": MODEL, "input": "alpha one"}, request_id="burst-hit-3"),
        post(url, {"model": "no-such-model", "input": "alpha one"}),
        post(url, {"model": MODEL, "input": ""}),
        post(url, {"model": MODEL, "input": "alpha one", "dimensions": 9999}),
        post(url, {"model": MODEL, "input": "alpha three"}, request_id="has a space"),
        post(url, {"model": MODEL, "input": "beta one"}, key=LIMITED),
        post(url, {"model": MODEL, "input": "beta two"}, key=LIMITED),
        post(url, {"model": MODEL, "input": "alpha one"}, key="sk-not-a-key-of-anyone"),
    ]
    assert [r.status_code for r in replies] == [200, 200, 200, 404, 400, 400, 200, 200, 429, 401]
    assert [r.headers["x-embedgate-cache"] for r in replies if r.status_code == 200] == ["miss", "partial", "hit",
                                                                                        "miss", "miss"]
    return replies


def assert_burst_counted(samples: Samples, replies: list[httpx.Response]) -> None:
    assert series(samples, "embedgate_requests_total") == {
        labelled(model=MODEL, team="alpha", status="200"): 4,
        labelled(model=MODEL, team="alpha", status="400"): 1,
        labelled(model=MODEL, team="beta", status="200"): 1,
        labelled(model=MODEL, team="beta", status="429"): 1,
        labelled(model="other", team="alpha", status="404"): 1,
        labelled(model="other", team="alpha", status="400"): 1,
        labelled(model="other", team="none", status="401"): 1,
    }
    assert series(samples, "embedgate_upstream_requests_total") == {
        labelled(provider="openai", deployment=DEPLOYMENT, outcome="unavailable"): 1,
        labelled(provider="openai", deployment=DEPLOYMENT, outcome="ok"): 4,
    }
    assert value(samples, "embedgate_upstream_duration_seconds_count", provider="openai", deployment=DEPLOYMENT) == 4
    assert series(samples, "embedgate_upstream_retries_total") == {labelled(deployment=DEPLOYMENT): 1}
    assert series(samples, "embedgate_cache_lookups_total") == {
        labelled(model=MODEL, result="hit"): 2, labelled(model=MODEL, result="miss"): 4}
    tokens = [r.json()["usage"]["prompt_tokens"] for r in replies if r.status_code == 200]
    assert series(samples, "embedgate_tokens_total") == {labelled(model=MODEL, team="alpha"): sum(tokens[:4]),
                                                         labelled(model=MODEL, team="beta"): tokens[4]}
    assert series(samples, "embedgate_inputs_total") == {labelled(model=MODEL): 6}
    assert series(samples, "embedgate_ratelimit_rejections_total") == {labelled(team="beta", limit="rpm"): 1}
    assert series(samples, "embedgate_request_duration_seconds_count") == {labelled(model=MODEL): 5}
    assert value(samples, "embedgate_request_duration_seconds_bucket", model=MODEL, le="+Inf") == 5
    assert value(samples, "embedgate_gateway_overhead_seconds_count") == 5
    assert 0 < value(samples, "embedgate_gateway_overhead_seconds_sum") < value(
        samples, "embedgate_request_duration_seconds_sum", model=MODEL)
    assert value(samples, "embedgate_inflight_requests") == 0
    assert series(samples, "embedgate_circuit_open", nonzero=False) == {
        labelled(deployment=d): 0 for d in (DEPLOYMENT, "ada/openai", "fake/*/openai")}
    assert series(samples, "embedgate_store_errors_total") == {}
    assert series(samples, "embedgate_build_info") == {labelled(version="0.1.0"): 1}


def assert_bounded(text: str) -> None:
    """Every label value comes from the config, the key store or a fixed set; no secret or text anywhere."""
    for secret in SECRETS_AND_TEXTS:
        assert secret not in text
    for (_, labels) in parse(text):
        values = dict(labels)
        assert values.get("model", MODEL) in {MODEL, "ada", "fake/*", "other"}
        assert values.get("team", "alpha") in {"alpha", "beta", "none"}


def request_lines(log: str, json_lines: bool) -> dict[str, dict[str, Any]]:
    """The per-request log lines, by request id."""
    lines: dict[str, dict[str, Any]] = {}
    for line in log.splitlines():
        if json_lines:
            entry = orjson.loads(line)  # every line, start-up lines too, is one JSON object
            if entry["logger"] == "embedgate.access":
                lines[entry["request_id"]] = entry
        elif "embedgate.access: request " in line:
            fields = dict(part.split("=", 1) for part in line.split("embedgate.access: request ", 1)[1].split(" "))
            lines[fields["request_id"]] = fields
    return lines


@pytest.mark.parametrize(("workers", "log_format", "own_port"), [("1", "text", False), ("2", "json", True)])
def test_a_burst_of_traffic_is_counted_exactly_and_logged_once_per_request(
        fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path, workers: str, log_format: str,
        own_port: bool) -> None:
    """With two workers, /metrics is also on a port of its own (every worker listens there too) behind a token."""
    port, token = free_port(), "scrape-token-0123456789"
    metrics = {"port": port, "token": token} if own_port else {}
    config = burst_config(fake_openai, redis_server.url, metrics=metrics)
    with gateway_process(config, tmp_path, None, "--workers", workers, "--log-format", log_format) as gateway:
        replies = burst(gateway.url, fake_openai)
        scrape_url = f"http://127.0.0.1:{port}" if own_port else gateway.url
        texts = [scrape_text(scrape_url, token if own_port else None) for _ in range(6)]
        if own_port:
            assert httpx.get(gateway.url + "/metrics").status_code == 404  # not on the serving port any more
            assert httpx.get(scrape_url + "/metrics").status_code == 401
            assert httpx.get(scrape_url + "/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    log = gateway.log()  # once stopped: request lines are written in batches, the last ones at shutdown
    # Every scrape, whichever worker answers it, counts every worker's traffic.
    assert all(parse(text) == parse(texts[0]) for text in texts)
    assert_burst_counted(parse(texts[0]), replies)
    assert_bounded(texts[0])

    ids = [r.headers["x-request-id"] for r in replies]
    assert ids[2] == "burst-hit-3"  # a sane id is echoed; one with a space is replaced by a fresh one
    assert ids[6] != "has a space" and len(set(ids)) == len(ids) and all(ids)
    lines = request_lines(log, log_format == "json")
    assert set(ids) <= set(lines)
    hit = lines["burst-hit-3"]
    assert {k: str(hit[k]) for k in ("status", "model", "team", "cache", "deployment", "tokens", "inputs")} == {
        "status": "200", "model": MODEL, "team": "alpha", "cache": "hit", "deployment": "cache",
        "tokens": str(replies[2].json()["usage"]["prompt_tokens"]), "inputs": "1"}
    assert float(hit["latency_ms"]) >= float(hit["overhead_ms"]) >= 0
    assert lines[ids[0]]["deployment"] == DEPLOYMENT and lines[ids[0]]["cache"] == "miss"
    assert str(lines[ids[8]]["status"]) == "429" and lines[ids[8]]["team"] == "beta"
    assert lines[ids[9]]["team"] == "none" and str(lines[ids[9]]["status"]) == "401"
    for secret in (*SECRETS_AND_TEXTS, token):
        assert secret not in log
