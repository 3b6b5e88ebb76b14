"""Model-dependent limits, checked before any backend is called: token counts, vocabulary, dimensions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

from providers.base import EmbedInput
from providers.tokenizers import Cl100k, Tokenizer, cl100k
from proxy.dispatch import Target, check_servable
from proxy.errors import InvalidRequest
from proxy.request import MAX_TOKENS_PER_REQUEST, EmbeddingRequest, too_many_tokens
from proxy.routing import Route

OFF_LOOP_CHARS = 64_000  # count bigger requests on a worker thread so the loop keeps serving


@dataclass(frozen=True, slots=True)
class Counted:
    tokens: tuple[int, ...]  # per input, in order: its count, or an upper bound of it when `bounded`
    dimensions: int | None  # what to ask the backend for; None = native size
    input_type: str | None = None  # as it will reach a backend (None when every deployment ignores it)
    # `tokens` are UTF-8 byte bounds (see `token_bounds`): good for splitting to caps, never for a charge,
    # a cache entry or the client's usage.
    bounded: bool = False

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


async def count_inputs(inputs: Sequence[EmbedInput], tokenizer: Tokenizer) -> list[int]:
    """Each input's tokens: a token array's length, a text's count by `tokenizer`."""
    counts = [0 if isinstance(x, str) else len(x) for x in inputs]
    texts = [(index, x) for index, x in enumerate(inputs) if isinstance(x, str)]
    if texts:
        strings = [text for _, text in texts]
        if sum(map(len, strings)) > OFF_LOOP_CHARS:
            text_counts = await asyncio.to_thread(tokenizer.count, strings)
        else:
            text_counts = tokenizer.count(strings)
        for (index, _), n in zip(texts, text_counts, strict=True):
            counts[index] = n
    return counts


def utf8_bytes(text: str) -> int:
    # An ASCII str knows it is ASCII: no encoding needed. Lone surrogates count 3 bytes, as tiktoken's
    # replacement character does.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def token_bounds(request: EmbeddingRequest, route: Route, target: Target) -> list[int] | None:
    """Upper bounds of the inputs' counts, when they prove that no limit (per input, per request) and no
    deployment's cap of tokens per call can be crossed; else None, and the inputs must be counted.

    A cl100k token is at least one byte of the text's UTF-8, so the bytes bound the count. Not so for a
    local model's own tokenizer (it adds special tokens, and its count feeds the forward pass)."""
    if not isinstance(route.service.tokenizer, Cl100k):
        return None
    bounds = [utf8_bytes(x) if isinstance(x, str) else len(x) for x in request.inputs]
    caps = (c.caps.max_tokens for tier in target.tiers for c in tier)
    most = min([MAX_TOKENS_PER_REQUEST, *(cap for cap in caps if cap is not None)])
    if max(bounds) > route.entry.max_input_tokens or sum(bounds) > most:
        return None
    return bounds


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
    takes = any(c.caps.input_type for c in target.tiers[0])
    return request.input_type if takes else None


async def validate(request: EmbeddingRequest, route: Route, target: Target, *, exact: bool = True) -> Counted:
    """Every model-dependent rule, in the order a client can fix them.

    `exact=False` is the caller's word that no quota, usage record or cache entry needs the counts: then
    byte bounds stand in for them wherever they prove every limit safe (tiktoken on 2048 texts is most of
    the gateway's own work on the largest requests), and the count waits until an answer without usage
    needs it (proxy/embeddings.py)."""
    dimensions = check_dimensions(request, route)
    check_servable(target, dimensions, request.input_type)
    check_token_ids(request)
    input_type = effective_input_type(request, target)
    bounds = None if exact else token_bounds(request, route, target)
    if bounds is not None:
        return Counted(tokens=tuple(bounds), dimensions=dimensions, input_type=input_type, bounded=True)
    counts = await count_inputs(request.inputs, route.service.tokenizer)
    check_limits(request, route, counts)
    return Counted(tokens=tuple(counts), dimensions=dimensions, input_type=input_type)
