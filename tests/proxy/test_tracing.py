"""OpenTelemetry traces: the span tree of real requests through an in-process gateway (aiohttp test server),
exported to the SDK's InMemorySpanExporter; and tracing off costs no OpenTelemetry import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from providers.local import LocalProvider
from proxy.app import create_app
from proxy.settings import TracingSettings, parse_settings
from proxy.tracing import OtelTracing
from testkit.openai_upstream import FakeOpenAI
from testkit.servers import ROOT
from tests.conftest import upstream_config
from tests.support.local_model import stand_in

KEY = "sk-traced-team-key-0123456789"
LOCAL = "all-MiniLM-L6-v2"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def attribute(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {})[name]


@pytest.mark.asyncio
async def test_one_span_per_request_with_its_steps_as_children_under_the_callers_trace(
        fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    # The local deployment's forward pass is a stand-in (tests/providers/test_local.py runs the real model):
    # what is tested here is where its span lands.
    forward = stand_in(lambda payloads: np.ones((len(payloads), 4), dtype=np.float32))
    monkeypatch.setattr(LocalProvider, "_load", lambda self: forward())
    config = upstream_config(fake_openai, auth={"keys": [{"key": KEY, "team": "alpha"}]},
                             dispatch={"backoff_base": 0.01, "backoff_max": 0.02})
    config["models"].append({"name": LOCAL, "provider": "local"})  # type: ignore[attr-defined]
    exporter = InMemorySpanExporter()
    tracing = OtelTracing(TracingSettings(enabled=True), exporter)
    headers = {"Authorization": f"Bearer {KEY}"}
    fake_openai.fail_next(500)  # the first upstream call fails and is retried: two upstream spans
    async with TestClient(TestServer(create_app(parse_settings(config), tracing))) as client:
        remote = await client.post("/v1/embeddings", json={"model": "small", "input": "traced"},
                                   headers={**headers, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert remote.status == 200
        local = await client.post("/v1/embeddings", json={"model": LOCAL, "input": ["one", "two"]}, headers=headers)
        assert local.status == 200
        assert (await client.get("/healthz")).status == 200  # probes are not traced

    spans = list(exporter.get_finished_spans())
    roots = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in roots] == ["POST /v1/embeddings", "POST /v1/embeddings"]
    first, second = roots
    # The caller's traceparent: same trace, our span a child of the caller's span.
    assert f"{first.context.trace_id:032x}" == TRACE_ID
    assert first.parent is not None and f"{first.parent.span_id:016x}" == PARENT_ID and first.parent.is_remote
    assert attribute(first, "embedgate.request_id") == remote.headers["x-request-id"]
    assert attribute(first, "embedgate.team") == "alpha"
    assert attribute(first, "http.response.status_code") == 200
    assert sorted(s.name for s in children(spans, first)) == ["auth", "cache.read", "cache.write", "quota",
                                                              "upstream", "upstream"]
    upstream = [s for s in children(spans, first) if s.name == "upstream"]
    assert sorted(attribute(s, "embedgate.outcome") for s in upstream) == ["ok", "unavailable"]
    assert {attribute(s, "embedgate.deployment") for s in upstream} == {"text-embedding-3-small/openai"}
    assert all(s.kind is SpanKind.CLIENT for s in upstream)
    assert all(s.context.trace_id == first.context.trace_id for s in spans if s in children(spans, first))

    # No traceparent: a trace of its own; the local forward pass hangs under its upstream call.
    assert second.parent is None and second.context.trace_id != first.context.trace_id
    (call,) = [s for s in children(spans, second) if s.name == "upstream"]
    assert attribute(call, "embedgate.deployment") == f"{LOCAL}/local"
    (forward,) = children(spans, call)
    assert forward.name == "local.forward" and attribute(forward, "embedgate.batch_inputs") == 2
    assert forward.context.trace_id == second.context.trace_id
    assert len(spans) == 2 + 6 + len(children(spans, second)) + 1


def test_tracing_off_imports_no_opentelemetry_tracing() -> None:
    """redis-py may import OpenTelemetry's API for its own metrics; the gateway's tracing SDK stays unloaded."""
    script = """
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from proxy.app import create_app
from proxy.settings import parse_settings

async def main():
    app = create_app(parse_settings({"models": [{"name": "m", "provider": "openai", "api_base": "http://127.0.0.1:9"}]}))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/v1/models")).status == 200
asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
