"""The embeddings pipeline as one plain async function: route, validate, charge, cache + dispatch, render."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from providers.base import EmbedInput
from proxy.auth import Principal, authorize_model
from proxy.cache import ALLOW_ALL, CacheControl, space_for
from proxy.dispatch import Dispatched
from proxy.errors import GatewayError
from proxy.gateway import Gateway
from proxy.render import embeddings_body
from proxy.request import EmbeddingRequest
from proxy.validation import validate

CACHE_HEADER = "x-embedgate-cache"
DEPLOYMENT_HEADER = "x-embedgate-deployment"


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


async def create_embeddings(gw: Gateway, request: EmbeddingRequest, cache_control: CacheControl = ALLOW_ALL,
                            principal: Principal | None = None) -> EmbeddingResponse:
    route = gw.router.resolve(request.model)
    authorize_model(principal, request.model, route.entry)
    await route.service.wait_ready()
    target = route.target()
    counted = await validate(request, route, target)
    charge = await gw.quotas.charge(principal, request.user, counted.total)

    async def fetch(inputs: Sequence[EmbedInput], tokens: Sequence[int]) -> Dispatched:
        return await gw.dispatcher.dispatch(target, inputs, tokens, counted.dimensions, request.input_type)

    space = space_for(route.entry, route.space_identity(), counted.dimensions, gw.settings.cache,
                      team=principal.team if principal else None, input_type=counted.input_type)
    try:
        served = await gw.cache.embed(space, request.inputs, counted.tokens, fetch, cache_control)
    except BaseException as err:
        await gw.quotas.refund(charge)
        if isinstance(err, GatewayError) and err.input_index is not None:
            err.param = request.param(err.input_index)
        raise
    if served.hits and not gw.settings.cache.charge_hits:
        # Give back what was charged for those inputs (the gateway's count), not what the cache recorded.
        await gw.quotas.refund(charge, sum(counted.tokens[i] for i in served.hits))

    gw.metrics.tokens.labels(route.entry.name).inc(served.prompt_tokens)
    gw.metrics.inputs.labels(route.entry.name).inc(len(request.inputs))
    body = embeddings_body(served.vectors, model=request.model, encoding_format=request.encoding_format,
                           prompt_tokens=served.prompt_tokens)
    await gw.usage.record(principal, request.user, route.entry.name, tokens=served.prompt_tokens,
                          cache_hits=served.cache_hits, at=charge.charged_at)
    headers = {CACHE_HEADER: served.status, DEPLOYMENT_HEADER: ",".join(served.deployments) or "cache",
               **charge.headers}
    return EmbeddingResponse(body, headers)
