"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedgate_requests", "Embedding requests by model and HTTP status",
            ["model", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "embedgate_request_seconds", "Embedding request latency", ["model"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "embedgate_upstream_seconds", "Backend call latency", ["model", "provider"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.tokens = Counter("embedgate_tokens", "Input tokens served", ["model"], registry=self.registry)
        self.inputs = Counter("embedgate_inputs", "Inputs embedded", ["model"], registry=self.registry)
        self.store_errors = Counter(
            "embedgate_store_errors", "Store operations that failed, by operation",
            ["operation"], registry=self.registry,
        )

        self.cache_lookups = Counter(
            "embedgate_cache_lookups", "Distinct inputs looked up in the embedding cache, by result",
            ["model", "result"], registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
