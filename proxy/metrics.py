"""Prometheus metrics, one registry per app so several apps can live in one process (tests).

Label values are bounded: models are config entry names, teams come from the config or the key store
(at most `MAX_TEAMS` of them, then `other`), deployments and providers from the config, outcomes and
limits from fixed sets. Nothing a client chooses (a model string, a user, a key, a text) is a label.

The hot path never calls `.labels()` (it validates and locks): children are looked up in plain dicts.
With several workers (`embedgate serve --workers N`) values live in prometheus-client's multiprocess
files and every gauge says how the workers' values combine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from proxy.auth import Principal
    from proxy.dispatch import CallReport

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Fine enough to see sub-millisecond gateway time, wide enough for a slow upstream.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10, 30)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
OTHER = "other"  # a model or team outside the config and the key store (or past MAX_TEAMS)
NO_TEAM = "none"  # open mode, or the request failed before its key was known
MASTER_TEAM = "master"  # the master key, which belongs to no team
MAX_TEAMS = 1000
STORE_OPERATIONS = ("auth", "quota", "refund", "usage", "admin", "cache_read", "cache_write")
CACHE_RESULTS = ("hit", "miss")


def _registries() -> tuple[CollectorRegistry, CollectorRegistry | None]:
    """(what /metrics renders, where metric objects register). With several workers (PROMETHEUS_MULTIPROC_DIR
    set by `embedgate serve --workers N`) values live in files one per process, and /metrics on any worker
    sums every worker's: the metric objects then register nowhere, or they would be counted twice."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry, None
    return registry, registry


def version() -> str:
    try:
        return metadata.version("embedgate")
    except metadata.PackageNotFoundError:
        return "unknown"


class Children:
    """A labelled metric's children by label values, cached in a plain dict."""

    __slots__ = ("_cache", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self.metric.labels(*values)
        return child


class Metrics:
    def __init__(self, models: Iterable[str] = (), deployments: Sequence[tuple[str, str]] = ()) -> None:
        """`models`: config entry names; `deployments`: (name, provider) pairs, whose series start at 0."""
        self.registry, own = _registries()
        self.requests = Children(Counter(
            "embedgate_requests", "Embedding requests by model, team and HTTP status",
            ["model", "team", "status"], registry=own))
        self.latency = Children(Histogram(
            "embedgate_request_duration_seconds", "Embedding request latency, successful requests",
            ["model"], buckets=LATENCY_BUCKETS, registry=own))
        self.overhead = Histogram(
            "embedgate_gateway_overhead_seconds",
            "Time a successful request spent in the gateway: its latency minus the time it waited on upstreams",
            buckets=OVERHEAD_BUCKETS, registry=own)
        self.upstream_requests = Children(Counter(
            "embedgate_upstream_requests", "Upstream calls by deployment and outcome (ok or an error kind)",
            ["provider", "deployment", "outcome"], registry=own))
        self.upstream_latency = Children(Histogram(
            "embedgate_upstream_duration_seconds", "Latency of successful upstream calls",
            ["provider", "deployment"], buckets=LATENCY_BUCKETS, registry=own))
        self.upstream_retries = Children(Counter(
            "embedgate_upstream_retries", "Upstream calls that retried inputs an earlier call failed",
            ["deployment"], registry=own))
        self.tokens = Children(Counter(
            "embedgate_tokens", "Input tokens served, by model and team", ["model", "team"], registry=own))
        self.inputs = Children(Counter("embedgate_inputs", "Inputs embedded", ["model"], registry=own))
        self.cache_lookups = Children(Counter(
            "embedgate_cache_lookups", "Distinct inputs looked up in the embedding cache, by result",
            ["model", "result"], registry=own))
        self.ratelimit_rejections = Children(Counter(
            "embedgate_ratelimit_rejections", "Requests refused with 429 by a quota, by team and limit",
            ["team", "limit"], registry=own))
        self.inflight = Gauge(
            "embedgate_inflight_requests", "Embedding requests being served", registry=own,
            multiprocess_mode="livesum")
        self.local_batch_size = Children(Histogram(
            "embedgate_local_batch_size", "Inputs per forward pass of a local model", ["deployment"],
            buckets=BATCH_BUCKETS, registry=own))
        self.local_queue_depth = Children(Gauge(
            "embedgate_local_queue_depth", "Inputs waiting for a local model's next forward pass", ["deployment"],
            registry=own, multiprocess_mode="livesum"))
        self.circuit_open = Children(Gauge(
            "embedgate_circuit_open", "1 while a deployment's circuit breaker is open (in any worker)",
            ["deployment"], registry=own, multiprocess_mode="livemax"))
        self.budget_used = Children(Gauge(
            "embedgate_team_budget_used_ratio", "Share of a team's tokens_per_day budget used today, as of its "
            "latest request (teams with such a budget only)", ["team"], registry=own,
            multiprocess_mode="mostrecent"))
        self.store_errors = Children(Counter(
            "embedgate_store_errors", "Store operations that failed, by operation", ["operation"], registry=own))
        build = Gauge("embedgate_build_info", "The running embedgate's version (always 1)", ["version"],
                      registry=own, multiprocess_mode="max")
        build.labels(version()).set(1)

        self._teams: set[str] = set()
        self._circuit: dict[str, bool] = {}  # each deployment's breaker as last set in `circuit_open`
        # Series that exist from the start read 0 rather than missing (rate() and alerts need them).
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(operation)
        for model in models:
            self.latency.labels(model)
            for result in CACHE_RESULTS:
                self.cache_lookups.labels(model, result)
        for deployment, _provider in deployments:
            self.upstream_retries.labels(deployment)
            self.circuit_open.labels(deployment).set(0)
            self._circuit[deployment] = False

    def team(self, principal: Principal | None) -> str:
        """The bounded team label of a caller."""
        if principal is None:
            return NO_TEAM
        team = principal.team
        if team is None:
            return MASTER_TEAM
        if team not in self._teams:
            if len(self._teams) >= MAX_TEAMS:
                return OTHER
            self._teams.add(team)
        return team

    def request_done(self, model: str, team: str, status: int, seconds: float, upstream_seconds: float,
                     tokens: int, inputs: int) -> None:
        """One embeddings request answered; the figures after `seconds` matter only for a 200."""
        self.requests.labels(model, team, str(status)).inc()
        if status != 200:
            return
        self.latency.labels(model).observe(seconds)
        self.overhead.observe(max(0.0, seconds - upstream_seconds))
        self.tokens.labels(model, team).inc(tokens)
        self.inputs.labels(model).inc(inputs)

    def rejected(self, principal: Principal, limit: str) -> None:
        """A quota refused a request (429); `limit`: rpm, tpm, tokens_per_day or tokens_per_month."""
        self.ratelimit_rejections.labels(self.team(principal), limit).inc()

    def budget(self, principal: Principal, used: float) -> None:
        """A charge saw its team's day budget `used` (a share, over 1 once spent)."""
        self.budget_used.labels(self.team(principal)).set(used)

    def observe_call(self, report: CallReport) -> None:
        self.upstream_requests.labels(report.provider, report.deployment, report.outcome).inc()
        if report.outcome == "ok":
            self.upstream_latency.labels(report.provider, report.deployment).observe(report.seconds)
        if report.retry:
            self.upstream_retries.labels(report.deployment).inc()
        if self._circuit.get(report.deployment) is not report.circuit_open:  # set when it changes, not per call
            self._circuit[report.deployment] = report.circuit_open
            self.circuit_open.labels(report.deployment).set(1 if report.circuit_open else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
