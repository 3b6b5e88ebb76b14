"""/readyz waits for every backend to start; requests wait for a loading model instead of failing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from providers import registry
from providers.base import EmbedBatch, EmbedResult
from providers.http import HttpClient
from providers.tokenizers import Tokenizer
from proxy.app import create_app
from proxy.settings import ModelEntry, parse_settings
from tests.support.servers import ThreadedServer

GATE = threading.Event()


class SlowStartProvider:
    """A backend whose start-up only finishes when the test says so."""

    def __init__(self, entry: ModelEntry, http: HttpClient) -> None:
        pass

    @property
    def tokenizer(self) -> Tokenizer | None:
        return None

    async def start(self) -> None:
        await asyncio.to_thread(GATE.wait)

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        return EmbedResult(np.ones((len(batch.inputs), 2), dtype=np.float32))

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


@pytest.fixture
def slow_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedServer]:
    GATE.clear()
    monkeypatch.setitem(registry.PROVIDERS, "slow", SlowStartProvider)
    settings = parse_settings({"models": [{"name": "slow-model", "provider": "slow"}]})
    server = ThreadedServer(lambda: create_app(settings)).start()
    yield server
    GATE.set()
    server.stop()


def test_ready_only_after_backends_start(slow_gateway: ThreadedServer) -> None:
    assert httpx.get(slow_gateway.url + "/healthz").status_code == 200
    not_ready = httpx.get(slow_gateway.url + "/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["model:slow-model"] is False

    results: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: results.append(httpx.post(
        slow_gateway.url + "/v1/embeddings", json={"model": "slow-model", "input": "x"}, timeout=30)))
    waiter.start()
    GATE.set()
    waiter.join(timeout=30)
    assert results and results[0].status_code == 200  # the request waited for the model, then was served
    assert httpx.get(slow_gateway.url + "/readyz").status_code == 200
