"""The embeddings pipeline as one plain async function: route, validate, charge, cache + dispatch, render.

`embed_charged` is its second half (cache + dispatch, refunds, usage), shared with the batch worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace

from providers.base import EmbedInput
from proxy.auth import ANONYMOUS, Caller, KeyChanged, Principal, authorize_model, confirmed
from proxy.cache import ALLOW_ALL, CacheControl, Lookup, Served, Space, caching, space_for
from proxy.dispatch import Dispatched, Target
from proxy.errors import GatewayError, InvalidRequest
from proxy.gateway import Gateway
from proxy.quota import Charge
from proxy.render import Pieces, embeddings_answer
from proxy.request import EmbeddingRequest
from proxy.routing import Route
from proxy.validation import Counted, count_inputs, validate

CACHE_HEADER = "x-embedgate-cache"
DEPLOYMENT_HEADER = "x-embedgate-deployment"


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    body: bytes | Pieces  # a large answer in pieces, rendered as they are written
    headers: dict[str, str] = field(default_factory=dict)
    # What was served, for metrics and the log line.
    tokens: int = 0
    inputs: int = 0
    cache: str = "bypass"
    deployment: str = ""
    upstream_seconds: float = 0.0


async def create_embeddings(gw: Gateway, request: EmbeddingRequest, cache_control: CacheControl = ALLOW_ALL,
                            caller: Caller = ANONYMOUS) -> EmbeddingResponse:
    """A guessed caller (proxy/auth.py `identify`) goes as guessed up to its quota charge, which runs beside
    the store's read of its key; a guess that proves wrong is refunded in full and the request goes again
    as the store has the key."""
    try:
        return await _create(gw, request, cache_control, caller)
    except KeyChanged as changed:
        return await _create(gw, request, cache_control, Caller(changed.principal))


async def _create(gw: Gateway, request: EmbeddingRequest, cache_control: CacheControl,
                  caller: Caller) -> EmbeddingResponse:
    principal = caller.principal
    try:
        route = gw.router.resolve(request.model)
        authorize_model(principal, request.model, route.entry)
        await route.service.wait_ready()
        target = route.target()
        # Counts feed quota charges, usage records and cache entries: with none of them, bounds may do.
        exact = principal is not None or caching(route.entry, gw.settings.cache)
        try:
            counted = await validate(request, route, target, exact=exact)
        except InvalidRequest as err:
            await gw.quotas.count_refused(await confirmed(caller), request.user, err)
            raise
    except GatewayError:
        await confirmed(caller)  # a revoked key's 401 comes first, and a changed key goes again
        raise
    space = cache_space(gw, route, counted, principal)
    looked_up: asyncio.Task[Lookup] | None = None
    if space is not None and cache_control.read and gw.quotas.charges(principal):
        # The cache read, the quota charge and a guessed key's read need nothing of each other: started in
        # one turn of the loop, they leave as one pipeline (proxy/coalesce.py). A refused request has read
        # for nothing, which costs the store little.
        looked_up = asyncio.get_running_loop().create_task(
            gw.cache.lookup(space, request.inputs, counted.tokens, cache_control))
    try:
        with gw.tracing.span("quota"):
            charge = await _charge(gw, caller, request.user, counted.total)
    except BaseException:
        if looked_up is not None:
            looked_up.cancel()
        raise
    try:
        served = await embed_charged(gw, route, target, request.inputs, counted, charge, principal, request.user,
                                     request.input_type, cache_control, space=space, looked_up=looked_up)
    except GatewayError as err:
        if err.input_index is not None:
            err.param = request.param(err.input_index)
        raise
    body = embeddings_answer(served.vectors, model=request.model, encoding_format=request.encoding_format,
                             prompt_tokens=served.prompt_tokens)
    deployment = ",".join(served.deployments) or "cache"
    headers = {CACHE_HEADER: served.status, DEPLOYMENT_HEADER: deployment, **charge.headers}
    return EmbeddingResponse(body, headers, served.prompt_tokens, len(request.inputs), served.status, deployment,
                             served.upstream_seconds)


async def _charge(gw: Gateway, caller: Caller, user: str | None, tokens: int) -> Charge:
    """The request's quota charge. For a guessed caller it runs beside the store's read of the key, so the two
    cost one round trip; a charge the key proves not to deserve is given back whole, the request included."""
    if caller.confirm is None:
        return await gw.quotas.charge(caller.principal, user, tokens)
    # The key's read starts first (a task of its own), then the charge (its own too, see Quotas.charge): both
    # leave in one pipeline (proxy/coalesce.py). They are awaited in turn, not gathered: no more tasks for them.
    caller.confirm()
    try:
        charged = await gw.quotas.charge(caller.principal, user, tokens)
    except Exception:
        await confirmed(caller)  # a revoked or changed key answers before the charge's refusal
        raise
    try:
        await confirmed(caller)
    except BaseException:
        await gw.quotas.refund(charged, request=True)
        raise
    return charged


def cache_space(gw: Gateway, route: Route, counted: Counted, principal: Principal | None) -> Space | None:
    return space_for(route.entry, route.space_identity(), counted.dimensions, gw.settings.cache,
                     team=principal.team if principal else None, input_type=counted.input_type)


async def embed_charged(gw: Gateway, route: Route, target: Target, inputs: Sequence[EmbedInput], counted: Counted,
                        charge: Charge, principal: Principal | None, user: str | None, input_type: str | None,
                        cache_control: CacheControl = ALLOW_ALL, requests: int = 1, *, space: Space | None,
                        looked_up: Awaitable[Lookup] | None = None) -> Served:
    """Vectors for inputs already validated and charged: through the cache and the dispatcher, the
    charge refunded on failure (and for cache hits unless they are charged), usage recorded.
    The HTTP handler and the batch worker both come through here; `requests` is how many requests of
    the caller these inputs answer (a batch packs many lines into one call). `space`: the cache space
    (`cache_space`); `looked_up`: the store read of it, when the caller started it already."""

    async def fetch(items: Sequence[EmbedInput], tokens: Sequence[int]) -> Dispatched:
        result = await gw.dispatcher.dispatch(target, items, tokens, counted.dimensions, input_type)
        if counted.bounded and result.prompt_tokens is None:
            # No usage from the backend, and validation only bounded the counts: the client's usage is
            # the gateway's own count, as ever, taken now.
            return replace(result, prompt_tokens=sum(await count_inputs(items, route.service.tokenizer)))
        return result

    try:
        looked = await looked_up if looked_up is not None else None
        served = await gw.cache.embed(space, inputs, counted.tokens, fetch, cache_control, looked)
    except BaseException:
        await gw.quotas.refund(charge)
        raise
    if served.hits and not gw.settings.cache.charge_hits:
        # Give back what was charged for those inputs (the gateway's count), not what the cache recorded.
        await gw.quotas.refund(charge, sum(counted.tokens[i] for i in served.hits))
    await gw.usage.record(principal, user, route.entry.name, tokens=served.prompt_tokens,
                          requests=requests, cache_hits=served.cache_hits, at=charge.charged_at)
    return served
