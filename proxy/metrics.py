"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from proxy.dispatch import CallReport

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _registries() -> tuple[CollectorRegistry, CollectorRegistry | None]:
    """(what /metrics renders, where metric objects register). With several workers (PROMETHEUS_MULTIPROC_DIR
    set by `embedgate serve --workers N`) values live in files one per process, and /metrics on any worker
    sums every worker's: the metric objects then register nowhere, or they would be counted twice."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry, None
    return registry, registry


class Metrics:
    def __init__(self) -> None:
        self.registry, own = _registries()
        self.requests = Counter(
            "embedgate_requests", "Embedding requests by model and HTTP status",
            ["model", "status"], registry=own,
        )
        self.latency = Histogram(
            "embedgate_request_seconds", "Embedding request latency", ["model"],
            buckets=LATENCY_BUCKETS, registry=own,
        )
        self.upstream_latency = Histogram(
            "embedgate_upstream_duration_seconds", "Upstream call latency", ["provider", "deployment"],
            buckets=LATENCY_BUCKETS, registry=own,
        )
        self.upstream_requests = Counter(
            "embedgate_upstream_requests", "Upstream calls by deployment and outcome",
            ["provider", "deployment", "outcome"], registry=own,
        )
        self.upstream_retries = Counter(
            "embedgate_upstream_retries", "Upstream calls that retried inputs an earlier call failed",
            ["deployment"], registry=own,
        )
        self.tokens = Counter("embedgate_tokens", "Input tokens served", ["model"], registry=own)
        self.inputs = Counter("embedgate_inputs", "Inputs embedded", ["model"], registry=own)
        self.store_errors = Counter(
            "embedgate_store_errors", "Store operations that failed, by operation",
            ["operation"], registry=own,
        )

        self.cache_lookups = Counter(
            "embedgate_cache_lookups", "Distinct inputs looked up in the embedding cache, by result",
            ["model", "result"], registry=own,
        )

    def observe_call(self, report: CallReport) -> None:
        self.upstream_requests.labels(report.provider, report.deployment, report.outcome).inc()
        if report.outcome == "ok":
            self.upstream_latency.labels(report.provider, report.deployment).observe(report.seconds)
        if report.retry:
            self.upstream_retries.labels(report.deployment).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
