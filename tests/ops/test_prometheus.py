"""A real Prometheus scrapes real gateways (`embedgate serve --workers 2` on a remote model, and the bundled local
model) after traffic: every PromQL expression of the dashboard and the alert rules evaluates without error, the
main panels return series, and the alert a team at its daily budget must raise is firing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import RedisServer
from testkit.servers import GatewayProcess, ThreadedServer, free_port
from tests.conftest import serving_openai, upstream_config
from tests.support.admin import MASTER_KEY, put_team
from tests.support.http import embed
from tests.support.prometheus import (
    ALERT_RULES,
    NO_PROMETHEUS_REASON,
    PROMETHEUS,
    PrometheusServer,
    dashboard_queries,
    finite,
    rule_queries,
    running_prometheus,
)

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS_REASON)

KEYS = {"search": "sk-team-search-0001", "ads": "sk-team-ads-0002", "ml": "sk-team-ml-0003"}
MODEL = "text-embedding-3-small"
LOCAL_MODEL = "all-MiniLM-L6-v2"


def traffic_config(fake: FakeOpenAI, redis: RedisServer) -> dict[str, Any]:
    """Two workers must share one store, or each would keep its own quota counters."""
    return upstream_config(
        fake,
        server={"drain_grace": 0},
        store={"url": redis.url, "prefix": f"t{secrets.token_hex(4)}"},
        auth={"master_key": MASTER_KEY, "keys": [
            {"key": KEYS["search"], "team": "search"},
            {"key": KEYS["ads"], "team": "ads", "limits": {"tokens_per_day": 6}},  # one 5-token request a day
            {"key": KEYS["ml"], "team": "ml", "limits": {"rpm": 2}},
        ]},
    )


def send_round(url: str, fake: FakeOpenAI, round_: int) -> list[int]:
    """One round of traffic: each search request one new input and one the cache has seen."""
    def as_team(team: str, inputs: list[str]) -> int:
        return embed(url, inputs, model=MODEL, headers={"Authorization": f"Bearer {KEYS[team]}"}).status

    fake.fail_next(500)  # the round's first upstream call fails and is retried
    statuses = [as_team("search", [f"search query {round_}.{i}", "shared text"]) for i in range(4)]
    statuses += [as_team("ads", ["one two three four five"]) for _ in range(2)]
    statuses += [as_team("ml", [f"ml {i}"]) for i in range(3)]
    return statuses


def local_round(url: str, round_: int) -> None:
    for i in range(3):
        assert embed(url, [f"local round {round_} text {i}", "another"], model=LOCAL_MODEL).status == 200


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
            local_gateway: ThreadedServer) -> Iterator[PrometheusServer]:
    """A two-worker gateway (a remote model, teams and limits) and the session's local-model gateway after two
    rounds of traffic, and a Prometheus that scraped both after each round (a rate needs two samples of a
    series: the first round makes the series, the second moves them)."""
    directory: Path = tmp_path_factory.mktemp("scraped")
    port = free_port()
    served = f'sum(embedgate_requests_total{{instance="127.0.0.1:{port}"}})'
    served_locally = f'sum(embedgate_requests_total{{instance="127.0.0.1:{local_gateway.port}"}})'
    # Prometheus first: it takes a few seconds to start scraping, the gateway as long to start.
    with serving_openai() as fake, running_prometheus(
            [f"127.0.0.1:{port}", f"127.0.0.1:{local_gateway.port}"], [ALERT_RULES]) as prometheus:
        config = directory / "gateway.yaml"
        config.write_text(yaml.safe_dump(traffic_config(fake, redis_server)))
        gateway = GatewayProcess(config, port=port, args=("--workers", "2"))
        try:
            gateway.wait_ready(timeout=60)
            put_team(gateway.url, "ads", limits={"tokens_per_day": 6})  # a team budget too: its gauge has a series
            prometheus.wait_for_total('sum(up{job="embedgate"})', 2)
            local_before = sum(series.value for series in prometheus.query(served_locally))
            first = send_round(gateway.url, fake, 1)
            assert sorted(first) == [200] * 7 + [429] * 2  # search 4; ads 1, then over budget; ml 2, then over rpm
            local_round(local_gateway.url, 1)
            prometheus.wait_for_total(served, 9)
            prometheus.wait_for_total(served_locally, local_before + 3)
            second = send_round(gateway.url, fake, 2)
            assert sorted(second) == [200] * 4 + [429] * 5
            local_round(local_gateway.url, 2)
            prometheus.wait_for_total(served, 18)
            prometheus.wait_for_total(served_locally, local_before + 6)
            yield prometheus
        finally:
            gateway.stop()


@pytest.mark.parametrize("query", dashboard_queries() + rule_queries(), ids=lambda query: query.where)
def test_every_expression_evaluates(scraped: PrometheusServer, query: Any) -> None:
    scraped.query(query.expr)  # PromQLError names the expression and Prometheus' complaint


MAIN_PANELS = {  # panel title -> label values its series must include after the traffic above
    "Requests/s by team and model": {"team": {"search", "ads", "ml"}, "model": {MODEL}},
    "Responses/s by status": {"status": {"200", "429"}},
    "5xx ratio": {},
    "Tokens/s by team and model": {"team": {"search", "ads", "ml"}},
    "Request latency (p50 / p95 / p99)": {},
    "Request latency p99 by model": {"model": {MODEL}},
    "Gateway overhead (p50 / p95 / p99)": {},
    "Cache hit ratio by model": {"model": {MODEL}},
    "Inputs/s by model": {"model": {MODEL}},
    "429s by team and limit": {"team": {"ads", "ml"}, "limit": {"tokens_per_day", "rpm"}},
    "Upstream errors by deployment and outcome": {"outcome": {"unavailable"}},
    "Upstream calls/s by deployment": {"provider": {"openai"}},
    "Upstream latency p95 by deployment": {},
    "Retries/s by deployment": {},
    "In-flight requests by replica": {},
    "Replicas up": {},
    "Versions running": {},
    "Circuit breaker by deployment": {},
    "Local batch size (p50 / p95, mean)": {},
    "Local queue depth by replica": {},
    "Store errors/s by operation": {},
    "Daily budget used by team": {"team": {"ads"}},
}


@pytest.mark.parametrize("title", sorted(MAIN_PANELS))
def test_main_panel_returns_series(scraped: PrometheusServer, title: str) -> None:
    targets = [query for query in dashboard_queries() if query.where.startswith(f"panel {title!r} ")]
    assert targets, f"no panel {title!r} in the dashboard"
    for target in targets:
        result = scraped.query(target.expr)
        assert finite(result), f"{target.where}: {target.expr} -> {result}"
        for label, values in MAIN_PANELS[title].items():
            assert values <= {series.labels.get(label) for series in result}, f"{target.where}: {result}"


def test_the_cache_hit_ratio_counts_the_second_round(scraped: PrometheusServer) -> None:
    result = scraped.query(next(q.expr for q in dashboard_queries() if "Cache hit ratio" in q.where))
    [ratio] = [series.value for series in result if series.labels["model"] == MODEL]
    assert 0 < ratio < 1


def test_the_rules_load_healthy_and_the_daily_budget_alert_fires_for_that_team_only(
        scraped: PrometheusServer) -> None:
    rules = scraped.rules()
    assert {rule["name"] for rule in rules} == {query.where.removeprefix("rule ") for query in rule_queries()}
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == [], rules
    firing = scraped.wait_for_firing("EmbedgateTeamDailyBudgetExhausted")
    assert [alert["labels"]["team"] for alert in firing] == ["ads"]
    others = {alert["labels"]["alertname"] for alert in scraped.alerts() if alert["state"] == "firing"}
    assert others == {"EmbedgateTeamDailyBudgetExhausted"}  # nothing else is wrong here
