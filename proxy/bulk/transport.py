"""Where `embedgate embed` sends its batches: any OpenAI-compatible server over HTTP (a gateway, or
OpenAI itself), or the gateway's own pipeline in this process (`--local`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson

from providers.base import ProviderError, finite_seconds
from providers.openai_answer import parse_answer as parse_openai_answer

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class EmbedFailed(RuntimeError):
    """The server refused a batch in a way a retry cannot fix (a 4xx other than 408/409/429)."""


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: npt.NDArray[np.float32]
    tokens: int
    cache: str | None  # the gateway's x-embedgate-cache, where it says


class Transport(Protocol):
    async def embed(self, texts: Sequence[str]) -> Embedded: ...

    async def aclose(self) -> None: ...


def request_body(model: str, texts: Sequence[str], dimensions: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": list(texts), "encoding_format": "base64"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def parse_answer(body: bytes, expected: int) -> tuple[npt.NDArray[np.float32], int]:
    """An OpenAI embeddings answer → vectors in input order and its token count: the `openai` provider's
    own parser, which also refuses a wrong count, mixed widths or non-finite values."""
    try:
        result = parse_openai_answer(body, expected)
    except ProviderError as err:
        raise EmbedFailed(f"the server's answer is not an embeddings list: {err}") from err
    return result.vectors, result.prompt_tokens or 0


class HttpTransport:
    """POST {url}/embeddings with bounded retries: 429, 5xx, timeouts and lost connections wait
    (`Retry-After` when the server gives one, else exponential back-off with jitter) and try again."""

    def __init__(self, url: str, api_key: str | None, model: str, dimensions: int | None,
                 max_attempts: int = 10, timeout: float = 300.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout))
        self._url = url.rstrip("/") + "/embeddings"
        self._model, self._dimensions = model, dimensions
        self._max_attempts = max_attempts
        self.retries = 0

    async def embed(self, texts: Sequence[str]) -> Embedded:
        payload = orjson.dumps(request_body(self._model, texts, self._dimensions))
        for attempt in range(self._max_attempts):
            wait: float | None = None
            try:
                async with self._session.post(self._url, data=payload,
                                              headers={"Content-Type": "application/json"}) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        vectors, tokens = parse_answer(body, len(texts))
                        return Embedded(vectors, tokens, resp.headers.get("x-embedgate-cache"))
                    if resp.status not in RETRY_STATUSES:
                        raise EmbedFailed(f"{resp.status}: {_message(body)}")
                    wait = finite_seconds(resp.headers.get("Retry-After"))
                    reason = f"{resp.status}: {_message(body)}"
            except (TimeoutError, aiohttp.ClientError) as err:
                reason = f"{type(err).__name__}: {err}"
            if attempt + 1 == self._max_attempts:
                raise EmbedFailed(f"gave up after {self._max_attempts} attempts; last: {reason}")
            self.retries += 1
            await asyncio.sleep(wait if wait is not None else min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._session.close()


def _message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


class InProcessTransport:
    """The gateway's own pipeline (validation, cache, dispatch, the local model's batching) without a
    server: for users who have none. Settings as `embedgate serve` reads them."""

    def __init__(self, settings: Any, model: str, dimensions: int | None) -> None:
        from proxy.gateway import Gateway

        self._gateway = Gateway(settings)
        self._model, self._dimensions = model, dimensions
        self._started = False
        self.retries = 0

    async def embed(self, texts: Sequence[str]) -> Embedded:
        from proxy.embeddings import CACHE_HEADER, create_embeddings
        from proxy.errors import GatewayError
        from proxy.request import parse_embedding_request

        if not self._started:
            self._gateway.start()
            self._started = True
        try:
            request = parse_embedding_request(orjson.dumps(request_body(self._model, texts, self._dimensions)))
            response = await create_embeddings(self._gateway, request)
        except GatewayError as err:
            raise EmbedFailed(f"{err.status}: {err.message}") from err
        body = response.body if isinstance(response.body, bytes) else response.body.joined()
        vectors, tokens = parse_answer(body, len(texts))
        return Embedded(vectors, tokens, response.headers.get(CACHE_HEADER))

    async def aclose(self) -> None:
        await self._gateway.aclose()
