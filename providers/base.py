"""The one small contract every backend implements, and its result and error types."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from providers.tokenizers import Tokenizer

EmbedInput = str | Sequence[int]
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class EmbedBatch:
    """What the gateway asks a backend for: texts or token-id lists, in order."""

    model: str
    inputs: Sequence[EmbedInput]
    dimensions: int | None = None


@dataclass(frozen=True, slots=True)
class EmbedResult:
    vectors: Vectors  # float32, shape [len(inputs), d], row i answers inputs[i]
    prompt_tokens: int | None = None  # the backend's own count, when it reports one


class ErrorKind(enum.Enum):
    BAD_REQUEST = "bad_request"  # the backend refused this input; the client can fix it
    AUTH = "auth"  # the backend refused our credentials; an operator must fix it
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"  # our own queue to the backend is full
    UNAVAILABLE = "unavailable"  # connection failure or 5xx
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad_response"  # answered, but not in the documented shape


class ProviderError(Exception):
    def __init__(self, kind: ErrorKind, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


@runtime_checkable
class Provider(Protocol):
    """A backend. `start` may take long (model load); the gateway reports ready after it."""

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's own tokenizer, or None to count with cl100k_base."""

    async def start(self) -> None: ...

    async def embed(self, batch: EmbedBatch) -> EmbedResult: ...

    async def health(self) -> bool: ...

    async def aclose(self) -> None: ...


def check_shape(vectors: Vectors, expected_rows: int) -> Vectors:
    """Every provider's last step: refuse an answer whose row count is wrong."""
    if vectors.ndim != 2 or vectors.shape[0] != expected_rows:
        raise ProviderError(
            ErrorKind.BAD_RESPONSE,
            f"backend returned {vectors.shape[0] if vectors.ndim else 0} embeddings for {expected_rows} inputs",
        )
    return np.ascontiguousarray(vectors, dtype=np.float32)
