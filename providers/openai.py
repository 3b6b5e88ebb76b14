"""OpenAI's embeddings API, and every server that speaks it (Azure v1, Mistral, Jina, TEI,
vLLM, Ollama, Infinity, LocalAI)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from providers.base import EmbedBatch, EmbedResult, ErrorKind, ProviderError, check_shape
from providers.http import HttpClient
from providers.tokenizers import Tokenizer
from proxy.settings import ModelEntry

DEFAULT_API_BASE = "https://api.openai.com/v1"


def to_payload(batch: EmbedBatch, encoding_format: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": batch.model,
        "input": [x if isinstance(x, str) else list(x) for x in batch.inputs],
        "encoding_format": encoding_format,
    }
    if batch.dimensions is not None:
        payload["dimensions"] = batch.dimensions
    return payload


def _vector(raw: Any) -> np.ndarray:
    if isinstance(raw, str):
        return np.frombuffer(base64.b64decode(raw), dtype="<f4")
    if isinstance(raw, list):
        return np.asarray(raw, dtype=np.float32)
    raise ProviderError(ErrorKind.BAD_RESPONSE, "embedding is neither a float list nor base64")


def from_payload(body: Any, expected: int) -> EmbedResult:
    """Parse an OpenAI-shaped answer, float or base64, into rows in input order."""
    try:
        items = body["data"]
        rows: list[np.ndarray | None] = [None] * expected
        for position, item in enumerate(items):
            index = int(item.get("index", position))
            if not 0 <= index < expected or rows[index] is not None:
                raise ProviderError(ErrorKind.BAD_RESPONSE, f"backend returned a bad index {index}")
            rows[index] = _vector(item["embedding"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ProviderError(ErrorKind.BAD_RESPONSE, "backend answer is not an OpenAI embeddings list") from err
    if any(row is None for row in rows) or len({row.shape for row in rows if row is not None}) > 1:
        raise ProviderError(ErrorKind.BAD_RESPONSE, "backend answer is missing embeddings or mixes sizes")
    usage = body.get("usage") or {}
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    vectors = np.stack([row for row in rows if row is not None]) if expected else np.zeros((0, 0), np.float32)
    prompt_tokens = tokens if isinstance(tokens, int) else None
    return EmbedResult(vectors=check_shape(vectors, expected), prompt_tokens=prompt_tokens)


class OpenAIProvider:
    def __init__(self, entry: ModelEntry, http: HttpClient) -> None:
        self._http = http
        self._url = (entry.api_base or DEFAULT_API_BASE).rstrip("/") + "/embeddings"
        self._key = entry.api_key.get_secret_value() if entry.api_key else ""
        self._headers = dict(entry.headers)
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"
        self._encoding = entry.upstream_encoding
        self._timeout = entry.timeout

    @property
    def tokenizer(self) -> Tokenizer | None:
        return None

    async def start(self) -> None:
        return None

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        body = await self._http.post_json(
            self._url, to_payload(batch, self._encoding), headers=self._headers,
            timeout=self._timeout, secrets=(self._key,),
        )
        return from_payload(body, len(batch.inputs))

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
