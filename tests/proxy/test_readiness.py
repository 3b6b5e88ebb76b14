"""/readyz waits for every backend to start; requests wait for a loading model instead of failing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest

from providers.openai import OpenAIProvider
from providers.tokenizers import cl100k
from proxy.app import create_app
from proxy.settings import parse_settings
from testkit.openai_upstream import FakeOpenAI
from testkit.servers import ThreadedServer, wait_ready

GATE = threading.Event()


async def slow_start(self: OpenAIProvider) -> None:
    """A backend whose start-up only finishes when the test says so (a local model loading, say)."""
    await asyncio.to_thread(GATE.wait)


@pytest.fixture
def slow_gateway(monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    GATE.clear()
    monkeypatch.setattr(OpenAIProvider, "start", slow_start)
    settings = parse_settings({"models": [{"name": "slow-model", "provider": "openai", "api_base": fake_openai.url,
                                           "api_key": fake_openai.api_key, "upstream_model": "m"}]})
    server = ThreadedServer(lambda: create_app(settings)).start()
    yield server
    GATE.set()
    server.stop()


def test_ready_only_after_backends_start(slow_gateway: ThreadedServer) -> None:
    assert httpx.get(slow_gateway.url + "/healthz").status_code == 200
    not_ready = httpx.get(slow_gateway.url + "/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["deployment:slow-model/openai"] is False

    results: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: results.append(httpx.post(
        slow_gateway.url + "/v1/embeddings", json={"model": "slow-model", "input": "x"}, timeout=30)))
    waiter.start()
    GATE.set()
    waiter.join(timeout=30)
    assert results and results[0].status_code == 200  # the request waited for the model, then was served
    assert httpx.get(slow_gateway.url + "/readyz").status_code == 200


def test_the_tokenizer_is_loaded_before_ready_not_on_the_first_request(fake_openai: FakeOpenAI) -> None:
    cl100k.cache_clear()  # as in a fresh process
    settings = parse_settings({"models": [{"name": "m", "provider": "openai", "api_base": fake_openai.url,
                                           "api_key": fake_openai.api_key}]})
    server = ThreadedServer(lambda: create_app(settings)).start()
    try:
        wait_ready(server.url)
        assert httpx.get(server.url + "/readyz").json()["checks"]["tokenizer"] is True
        assert cl100k.cache_info().currsize == 1  # loaded, and no request has come yet
    finally:
        server.stop()
