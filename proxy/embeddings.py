"""The embeddings pipeline as one plain async function: route, validate, dispatch, render."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from proxy.auth import Principal, authorize_model
from proxy.dispatch import dispatch
from proxy.gateway import Gateway
from proxy.render import embeddings_body
from proxy.request import EmbeddingRequest
from proxy.validation import validate


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


async def create_embeddings(gw: Gateway, request: EmbeddingRequest,
                            principal: Principal | None = None) -> EmbeddingResponse:
    route = gw.router.resolve(request.model)
    authorize_model(principal, request.model, route.entry)
    await route.backend.wait_ready()
    counted = await validate(request, route)
    charge = await gw.quotas.charge(principal, request.user, counted.total)

    started = time.perf_counter()
    try:
        result = await dispatch(route, request.inputs, counted.dimensions)
    except BaseException:
        await gw.quotas.refund(charge)
        raise
    gw.metrics.upstream_latency.labels(route.entry.name, route.entry.provider).observe(time.perf_counter() - started)

    prompt_tokens = result.prompt_tokens if result.prompt_tokens is not None else counted.total
    gw.metrics.tokens.labels(route.entry.name).inc(prompt_tokens)
    gw.metrics.inputs.labels(route.entry.name).inc(len(request.inputs))
    body = embeddings_body(result.vectors, model=request.model, encoding_format=request.encoding_format,
                           prompt_tokens=prompt_tokens)
    await gw.usage.record(principal, request.user, route.entry.name, tokens=prompt_tokens)
    return EmbeddingResponse(body, charge.headers)
