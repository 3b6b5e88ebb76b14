"""Model-dependent limits, checked before any backend is called: token counts, vocabulary, dimensions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import chain

import numpy as np

from providers.tokenizers import cl100k
from proxy.dispatch import Target, check_servable
from proxy.errors import InvalidRequest
from proxy.request import MAX_TOKENS_PER_REQUEST, EmbeddingRequest, too_many_tokens
from proxy.routing import Route

OFF_LOOP_CHARS = 64_000  # count bigger requests on a worker thread so the loop keeps serving


@dataclass(frozen=True, slots=True)
class Counted:
    tokens: tuple[int, ...]  # per input, in order
    dimensions: int | None  # what to ask the backend for; None = native size
    input_type: str | None = None  # as it will reach a backend (None when every deployment ignores it)

    @property
    def total(self) -> int:
        return sum(self.tokens)


def check_dimensions(request: EmbeddingRequest, route: Route) -> int | None:
    entry = route.entry
    if request.dimensions is None:
        return None
    if not entry.supports_dimensions:
        raise InvalidRequest(f"This model ({request.model}) does not support specifying dimensions.",
                             param="dimensions", code="unsupported_parameter")
    if entry.dimensions is not None and request.dimensions > entry.dimensions:
        raise InvalidRequest(
            f"'dimensions' must be between 1 and {entry.dimensions} for {request.model}, got {request.dimensions}.",
            param="dimensions", code="invalid_value",
        )
    # Asking for the native size is the same as not asking: one cache entry, one upstream shape.
    return None if request.dimensions == entry.dimensions else request.dimensions


def check_token_ids(request: EmbeddingRequest) -> None:
    """Every token id must be one cl100k can decode: inside its vocabulary and not one of its unused ids."""
    arrays = [(index, item) for index, item in enumerate(request.inputs) if not isinstance(item, str)]
    if not arrays:
        return
    # All ids in one array, checked at once against the tokenizer's table (parsing bounded them to 300,000).
    ends = np.cumsum([len(ids) for _, ids in arrays])
    flat = np.fromiter(chain.from_iterable(ids for _, ids in arrays), dtype=np.uint64, count=int(ends[-1]))
    codec = cl100k()
    refused = codec.undecodable(flat)
    if not refused.size:
        return
    position = int(refused[0])
    index = arrays[int(np.searchsorted(ends, position, side="right"))][0]
    token = int(flat[position])
    reason = (f"outside the tokenizer's vocabulary (0..{codec.vocab_size - 1})" if token >= codec.vocab_size
              else "an unused id of the tokenizer's vocabulary, which no text encodes to")
    raise InvalidRequest(f"'{request.param(index)}' holds token id {token}, {reason}.",
                         param=request.param(index), code="invalid_value")


async def count_tokens(request: EmbeddingRequest, route: Route) -> list[int]:
    counts = [0 if isinstance(x, str) else len(x) for x in request.inputs]
    texts = request.texts
    if texts:
        tokenizer = route.service.tokenizer
        strings = [text for _, text in texts]
        if sum(map(len, strings)) > OFF_LOOP_CHARS:
            text_counts = await asyncio.to_thread(tokenizer.count, strings)
        else:
            text_counts = tokenizer.count(strings)
        for (index, _), n in zip(texts, text_counts, strict=True):
            counts[index] = n
    return counts


def check_limits(request: EmbeddingRequest, route: Route, counts: list[int]) -> None:
    limit = route.entry.max_input_tokens
    for index, n in enumerate(counts):
        if n > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens, however you requested {n} tokens "
                f"in '{request.param(index)}'. Please reduce your input.",
                param=request.param(index), code="context_length_exceeded",
            )
    total = sum(counts)
    if total > MAX_TOKENS_PER_REQUEST:
        raise too_many_tokens(total)


def effective_input_type(request: EmbeddingRequest, target: Target) -> str | None:
    """The input_type that changes vectors: None when no deployment of the model takes one (ignored by config)."""
    if request.input_type is None:
        return None
    takes = any(c.deployment.provider.capabilities(c.model).input_type for c in target.tiers[0])
    return request.input_type if takes else None


async def validate(request: EmbeddingRequest, route: Route, target: Target) -> Counted:
    """Every model-dependent rule, in the order a client can fix them."""
    dimensions = check_dimensions(request, route)
    check_servable(target, dimensions, request.input_type)
    check_token_ids(request)
    counts = await count_tokens(request, route)
    check_limits(request, route, counts)
    return Counted(tokens=tuple(counts), dimensions=dimensions, input_type=effective_input_type(request, target))
