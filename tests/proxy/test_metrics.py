"""Metrics and the per-request log line in-process: bounded team labels, the local model's queue metrics,
`metrics.token` on the serving port, and a log line that exists only when its level is on."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from proxy.auth import MASTER, Principal
from proxy.metrics import MAX_TEAMS, Metrics
from testkit.openai_upstream import FakeOpenAI
from testkit.servers import ThreadedServer
from tests.conftest import running_gateway, upstream_config
from tests.support.admin import MASTER_KEY, TEN_TOKENS, create_key, embed, put_team, ten_tokens
from tests.support.http import embed_ok
from tests.support.metrics import scrape, series, value

LOCAL = "all-MiniLM-L6-v2"


def test_team_labels_are_bounded() -> None:
    metrics = Metrics()
    assert metrics.team(None) == "none"
    assert metrics.team(MASTER) == "master"
    teams = [metrics.team(Principal(key_id="k", team=f"team-{i}")) for i in range(MAX_TEAMS + 5)]
    assert teams[:MAX_TEAMS] == [f"team-{i}" for i in range(MAX_TEAMS)]
    assert teams[MAX_TEAMS:] == ["other"] * 5  # past the bound, a new team is `other`...
    assert metrics.team(Principal(key_id="k", team="team-3")) == "team-3"  # ...and a known one keeps its name


def test_local_model_batch_size_and_queue_depth(local_gateway: ThreadedServer) -> None:
    deployment = f"{LOCAL}/local"
    before = scrape(local_gateway.url)
    embed_ok(local_gateway.url, ["one", "two", "three"], model=LOCAL)
    after = scrape(local_gateway.url)
    batch_sum = "embedgate_local_batch_size_sum"
    assert value(after, batch_sum, deployment=deployment) - value(before, batch_sum, deployment=deployment) == 3
    batches = "embedgate_local_batch_size_count"
    assert value(after, batches, deployment=deployment) - value(before, batches, deployment=deployment) == 1
    assert series(after, "embedgate_local_queue_depth", nonzero=False) == {
        frozenset({("deployment", deployment)}): 0}


def test_inflight_requests_while_one_waits_on_its_upstream(fake_openai: FakeOpenAI) -> None:
    fake_openai.delay = 1.0
    with running_gateway(upstream_config(fake_openai)) as gateway, ThreadPoolExecutor(1) as pool:
        assert value(scrape(gateway.url), "embedgate_inflight_requests") == 0
        waiting = pool.submit(embed_ok, gateway.url, ["slow"])
        deadline = time.monotonic() + 10
        while value(scrape(gateway.url), "embedgate_inflight_requests") != 1:
            assert time.monotonic() < deadline and not waiting.done(), "the request was never counted in flight"
            time.sleep(0.02)
        waiting.result(timeout=30)
        assert value(scrape(gateway.url), "embedgate_inflight_requests") == 0


def test_metrics_token_on_the_serving_port(fake_openai: FakeOpenAI) -> None:
    token = "scrape-token-on-the-main-port"
    with running_gateway(upstream_config(fake_openai, metrics={"token": token})) as gateway:
        assert httpx.get(gateway.url + "/metrics").status_code == 401
        assert httpx.get(gateway.url + "/metrics", headers={"Authorization": "Basic " + token}).status_code == 401
        assert value(scrape(gateway.url, token), "embedgate_build_info", version="0.1.0") == 1


@pytest.mark.parametrize(("level", "lines"), [(logging.INFO, 1), (logging.WARNING, 0)])
def test_one_log_line_per_request_only_when_its_level_is_on(fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture,
                                                            level: int, lines: int) -> None:
    caplog.set_level(level, logger="embedgate.access")
    with running_gateway(upstream_config(fake_openai)) as gateway:
        reply = embed_ok(gateway.url, ["logged"], headers={"x-request-id": "rid-42"})
        httpx.get(gateway.url + "/healthz")  # probes log at DEBUG only
    records = [r for r in caplog.records if r.name == "embedgate.access"]
    assert len(records) == lines
    assert reply.headers["x-request-id"] == "rid-42"
    for record in records:
        fields = record.fields  # type: ignore[attr-defined]
        assert fields["request_id"] == "rid-42" and fields["status"] == 200 and fields["cache"] == "miss"
        assert "logged" not in str(fields)


def test_the_team_budget_gauge_follows_its_tokens_per_day(fake_openai: FakeOpenAI) -> None:
    with running_gateway(upstream_config(fake_openai, auth={"master_key": MASTER_KEY})) as gateway:
        put_team(gateway.url, "search", limits={"tokens_per_day": 40})
        put_team(gateway.url, "free")  # no day budget: no series
        key, free = create_key(gateway.url)["key"], create_key(gateway.url, team="free")["key"]
        for seed in range(3):
            assert embed(gateway.url, key, input=ten_tokens(seed)).status_code == 200
        assert embed(gateway.url, free, input=TEN_TOKENS).status_code == 200
        samples = scrape(gateway.url)
    assert value(samples, "embedgate_team_budget_used_ratio", team="search") == pytest.approx(30 / 40)
    assert not [labels for name, labels in samples if name == "embedgate_team_budget_used_ratio"
                and ("team", "free") in labels]
