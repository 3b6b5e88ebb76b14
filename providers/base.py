"""The one small contract every backend implements, and its result and error types."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from providers.tokenizers import Tokenizer

EmbedInput = str | Sequence[int]
Vectors = npt.NDArray[np.float32]

QUERY = "query"
DOCUMENT = "document"


@dataclass(frozen=True, slots=True)
class EmbedBatch:
    """What the gateway asks a backend for: texts (or token ids, where the backend takes them), in order."""

    model: str
    inputs: Sequence[EmbedInput]
    dimensions: int | None = None  # only values the backend's `Capabilities.dimensions` allows
    input_type: str | None = None  # "query" | "document" | a vendor-native value; None: the vendor's default


@dataclass(frozen=True, slots=True)
class EmbedResult:
    vectors: Vectors  # float32, shape [len(inputs), d], row i answers inputs[i]
    prompt_tokens: int | None = None  # the backend's own count, when it reports one


ANY_DIMENSIONS: tuple[int, ...] = ()  # marker: the backend takes any size from 1 to native


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one backend can take for one upstream model; the dispatcher adapts everything else."""

    max_inputs: int  # per call
    max_tokens: int | None = None  # summed over a call, where the vendor caps it
    # Sizes the backend produces itself: None none, ANY_DIMENSIONS any, else exactly these.
    dimensions: tuple[int, ...] | None = None
    input_type: bool = False  # the vendor (or the model's prefixes) know query vs document
    token_ids: bool = False  # token-id inputs can go as they are (cl100k ids; OpenAI's own models)

    def takes_dimensions(self, size: int) -> bool:
        return self.dimensions is not None and (self.dimensions == ANY_DIMENSIONS or size in self.dimensions)


class ErrorKind(enum.Enum):
    BAD_REQUEST = "bad_request"  # the backend refused this input; the client can fix it
    AUTH = "auth"  # the backend refused our credentials; an operator must fix it
    BILLING = "billing"  # the backend wants payment (HTTP 402): the operator's account, not the client's input
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"  # our own queue to the backend is full
    UNAVAILABLE = "unavailable"  # connection failure or 5xx
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad_response"  # answered, but not in the documented shape


RETRYABLE = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT})


class ProviderError(Exception):
    def __init__(self, kind: ErrorKind, message: str, *, retry_after: float | None = None,
                 input_index: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.input_index = input_index  # the batch position the backend blamed, when it said


@runtime_checkable
class Provider(Protocol):
    """A backend. `start` may take long (model load); the gateway reports ready after it."""

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's own tokenizer, or None to count with cl100k_base."""

    def capabilities(self, model: str) -> Capabilities:
        """What calls for `model` may carry. Fixed for a model: the gateway reads it once per deployment."""

    async def start(self) -> None: ...

    async def embed(self, batch: EmbedBatch) -> EmbedResult: ...

    async def health(self) -> bool: ...

    async def aclose(self) -> None: ...


def bad_response(message: str) -> ProviderError:
    return ProviderError(ErrorKind.BAD_RESPONSE, message)


def check_shape(vectors: Vectors, expected_rows: int) -> Vectors:
    """Every provider's last step: refuse an answer of the wrong row count, no width, or non-finite values."""
    if vectors.ndim != 2 or vectors.shape[0] != expected_rows:
        raise bad_response(
            f"backend returned {vectors.shape[0] if vectors.ndim else 0} embeddings for {expected_rows} inputs")
    if expected_rows and vectors.shape[1] == 0:
        raise bad_response("backend returned zero-width embeddings")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not _all_finite(vectors):  # NaN or Inf must never be cached or rendered as null
        raise bad_response("backend returned embeddings with NaN or infinite values")
    return vectors


_SCREENED_FROM = 1 << 14  # values; below, the screen's error-state switch costs more than it saves


def _all_finite(vectors: Vectors) -> bool:
    """The sum of squares is finite only when every value is (NaN and Inf carry through it), and costs a
    quarter of looking at each (2048 x 1536); only when it is not (a huge finite value may overflow it)
    are the values looked at one by one."""
    if vectors.size >= _SCREENED_FROM:
        flat = vectors.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(vectors).all())


def stack_rows(rows: Sequence[Vectors]) -> Vectors:
    """Rows of one width as one new [n, d] array, as np.stack makes it. One row (most requests) is copied
    straight: np.stack's own steps cost more than the copy of a row."""
    return rows[0][np.newaxis].copy() if len(rows) == 1 else np.stack(rows)


def number_rows(rows: Any, expected: int) -> Vectors:
    """A vendor's JSON list of number lists as float32 rows; ragged, non-numeric or miscounted answers refused."""
    if not isinstance(rows, list) or len(rows) != expected:
        raise bad_response(f"backend returned {len(rows) if isinstance(rows, list) else 0} embeddings "
                           f"for {expected} inputs")
    try:
        raw = np.asarray(rows)  # a ragged list raises; strings, nulls or objects show in the dtype
    except ValueError as err:
        raise bad_response("backend answer mixes embedding sizes") from err
    if raw.ndim != 2 or raw.dtype.kind not in "iuf":
        raise bad_response("backend embeddings are not lists of numbers")
    return check_shape(raw.astype(np.float32), expected)


def check_tokens(value: Any) -> int | None:
    """A usage count from a backend: a non-negative int, or None when absent; nonsense is refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_response(f"backend reported a nonsensical token count {value!r:.40}")
    return value


def normalize(vectors: Vectors) -> Vectors:
    """Rows scaled to unit length (in float64), as clients of an OpenAI-shaped API expect."""
    wide = vectors.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    return (wide / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def finite_seconds(value: Any) -> float | None:
    """A Retry-After style delay, or None when absent or nonsense (NaN, infinite, negative)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
