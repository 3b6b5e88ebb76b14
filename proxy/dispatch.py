"""Send inputs to a route's backend: split to the backend's batch cap, run the pieces
concurrently, reassemble in order, and turn provider failures into gateway errors."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from providers.base import EmbedBatch, EmbedInput, EmbedResult, ErrorKind, ProviderError, Vectors
from proxy.errors import (
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.routing import Route

MAX_PIECES_IN_FLIGHT = 8

# The one table from what went wrong at a backend to what the client sees.
_KIND_TO_ERROR: dict[ErrorKind, tuple[type[GatewayError], str]] = {
    ErrorKind.BAD_REQUEST: (InvalidRequest, "upstream_invalid_request"),
    ErrorKind.AUTH: (UpstreamError, "upstream_auth_failed"),
    ErrorKind.RATE_LIMITED: (ServiceUnavailable, "upstream_rate_limited"),
    ErrorKind.OVERLOADED: (ServiceUnavailable, "overloaded"),
    ErrorKind.UNAVAILABLE: (UpstreamError, "upstream_unavailable"),
    ErrorKind.TIMEOUT: (UpstreamTimeout, "upstream_timeout"),
    ErrorKind.BAD_RESPONSE: (UpstreamError, "upstream_bad_response"),
}


def to_gateway_error(err: ProviderError) -> GatewayError:
    cls, code = _KIND_TO_ERROR[err.kind]
    headers = {"Retry-After": f"{max(1, round(err.retry_after))}"} if err.retry_after else None
    return cls(err.message, code=code, headers=headers)


@dataclass(frozen=True, slots=True)
class Dispatched:
    vectors: Vectors
    prompt_tokens: int | None  # the backend's count, when every piece reported one


async def dispatch(route: Route, inputs: Sequence[EmbedInput], dimensions: int | None) -> Dispatched:
    size = route.entry.max_batch_size
    provider = route.backend.provider
    pieces = [
        EmbedBatch(model=route.upstream_model, inputs=inputs[start:start + size], dimensions=dimensions)
        for start in range(0, len(inputs), size)
    ]
    # Bounded fan-out: one huge request must not open hundreds of upstream connections at once.
    limit = asyncio.Semaphore(MAX_PIECES_IN_FLIGHT)

    async def send(piece: EmbedBatch) -> EmbedResult:
        async with limit:
            return await provider.embed(piece)

    try:
        results = await asyncio.gather(*(send(piece) for piece in pieces))
    except ProviderError as err:
        raise to_gateway_error(err) from err
    widths = {r.vectors.shape[1] for r in results}
    if len(widths) != 1:
        raise UpstreamError("backend returned embeddings of different sizes", code="upstream_bad_response")
    if dimensions is not None and widths != {dimensions}:
        raise UpstreamError(f"backend returned {widths.pop()} dimensions, {dimensions} were asked for",
                            code="upstream_bad_response")
    tokens = [r.prompt_tokens for r in results]
    vectors = results[0].vectors if len(results) == 1 else np.concatenate([r.vectors for r in results])
    return Dispatched(vectors, None if None in tokens else sum(t for t in tokens if t is not None))
