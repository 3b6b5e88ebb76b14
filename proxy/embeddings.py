"""The embeddings pipeline as one plain async function: route, validate, charge, cache + dispatch, render."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from providers.base import EmbedInput
from proxy.auth import Principal, authorize_model
from proxy.cache import ALLOW_ALL, CacheControl, space_for
from proxy.dispatch import Dispatched, dispatch
from proxy.gateway import Gateway
from proxy.render import embeddings_body
from proxy.request import EmbeddingRequest
from proxy.validation import validate

CACHE_HEADER = "x-embedgate-cache"


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


async def create_embeddings(gw: Gateway, request: EmbeddingRequest, cache_control: CacheControl = ALLOW_ALL,
                            principal: Principal | None = None) -> EmbeddingResponse:
    route = gw.router.resolve(request.model)
    authorize_model(principal, request.model, route.entry)
    await route.backend.wait_ready()
    counted = await validate(request, route)
    charge = await gw.quotas.charge(principal, request.user, counted.total)

    async def fetch(inputs: Sequence[EmbedInput]) -> Dispatched:
        started = time.perf_counter()
        result = await dispatch(route, inputs, counted.dimensions)
        gw.metrics.upstream_latency.labels(route.entry.name, route.entry.provider).observe(
            time.perf_counter() - started)
        return result

    space = space_for(route.entry, route.upstream_model, counted.dimensions, gw.settings.cache)
    try:
        served = await gw.cache.embed(space, request.inputs, counted.tokens, fetch, cache_control)
    except BaseException:
        await gw.quotas.refund(charge)
        raise
    if served.cached_tokens and not gw.settings.cache.charge_hits:
        await gw.quotas.refund(charge, served.cached_tokens)

    gw.metrics.tokens.labels(route.entry.name).inc(served.prompt_tokens)
    gw.metrics.inputs.labels(route.entry.name).inc(len(request.inputs))
    body = embeddings_body(served.vectors, model=request.model, encoding_format=request.encoding_format,
                           prompt_tokens=served.prompt_tokens)
    await gw.usage.record(principal, request.user, route.entry.name, tokens=served.prompt_tokens,
                          cache_hits=served.cache_hits)
    return EmbeddingResponse(body, {CACHE_HEADER: served.status, **charge.headers})
