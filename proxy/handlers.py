"""The OpenAI-facing HTTP handlers: parse, call a plain async function, render. Nothing more."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from proxy.auth import Principal, authorize_model, verified
from proxy.cache import CacheControl
from proxy.embeddings import create_embeddings
from proxy.errors import AuthenticationFailed, GatewayError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from proxy.gateway import Gateway
from proxy.metrics import NO_TEAM, OTHER, Metrics
from proxy.observe import EXCHANGE, REQUEST_ID
from proxy.quota import with_rate_limit_headers
from proxy.render import Pieces
from proxy.request import parse_embedding_request
from proxy.routing import metric_label
from proxy.schema import Health, ModelList, ModelObject, Readiness, parse_body
from proxy.settings import MetricsSettings

GATEWAY = web.AppKey("gateway", Gateway)
OPENAPI = web.AppKey("openapi", bytes)  # the document, rendered once at start-up

JSON = "application/json"
Body = TypeVar("Body", bound=BaseModel)


def json_response(data: BaseModel | object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer: a model of proxy/schema.py (what GET /openapi.json publishes), or plain data."""
    body = data.model_dump_json().encode() if isinstance(data, BaseModel) else orjson.dumps(data)
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


async def read_json_body(request: web.Request) -> bytes:
    """The raw body of a JSON request, with OpenAI-shaped 413/415 errors."""
    # A missing Content-Type is tolerated (aiohttp then reports octet-stream); a wrong one is not.
    if request.headers.get("Content-Type") and request.content_type != JSON:
        raise UnsupportedMediaType(
            f"Content-Type must be {JSON}, got {request.content_type!r}.", param="Content-Type"
        )
    limit = request.app[GATEWAY].settings.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body is {request.content_length} bytes; the limit is {limit}.")
    return await request.read()


async def read_model(request: web.Request, model: type[Body]) -> Body:
    """A JSON body validated by a pydantic model; what is wrong with it is a 400 naming the field."""
    return parse_body(await read_json_body(request) or b"{}", model)


async def authenticate(request: web.Request) -> Principal | None:
    return await request.app[GATEWAY].auth.authenticate(request.headers.get("Authorization"))


async def embeddings(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    exchange = request[EXCHANGE]
    exchange.model, exchange.team = OTHER, NO_TEAM  # until known: the metrics and the log line count it
    principal = parsed = None
    gw.metrics.inflight.inc()
    try:
        with gw.tracing.span("auth"):
            # 401 before any 400, as OpenAI does: a key known here goes on while the store reads it (see
            # proxy/auth.py), and every way out below waits for that read first.
            caller = await gw.auth.identify(request.headers.get("Authorization"))
        principal = caller.principal
        exchange.team = gw.metrics.team(principal)
        try:
            body = await read_json_body(request)
            parsed = parse_embedding_request(body)
        except GatewayError as err:
            principal = await verified(caller)
            if isinstance(err, InvalidRequest):
                await gw.quotas.count_refused(principal, None, err)
            raise
        exchange.model = metric_label(gw.router, parsed.model)
        cache_control = CacheControl.parse(request.headers.get("Cache-Control"))
        try:
            result = await create_embeddings(gw, parsed, cache_control, caller)
        except GatewayError:
            principal = await verified(caller)  # the key as the store has it, for the headers below
            raise
    except GatewayError as err:
        if principal is not None:
            if "x-ratelimit-limit-requests" not in err.headers:
                err.headers.update(await gw.quotas.headers(principal, parsed.user if parsed else None))
            err.headers = with_rate_limit_headers(err.headers)
        raise
    finally:
        gw.metrics.inflight.dec()
    exchange.tokens, exchange.inputs = result.tokens, result.inputs
    exchange.cache, exchange.deployment = result.cache, result.deployment
    exchange.upstream_seconds = result.upstream_seconds
    headers = result.headers if principal is None else with_rate_limit_headers(result.headers)
    if isinstance(result.body, bytes):
        return web.Response(body=result.body, content_type=JSON, headers=headers)
    return await write_pieces(request, result.body, headers)


async def write_pieces(request: web.Request, body: Pieces, headers: dict[str, str]) -> web.StreamResponse:
    """A large answer written a piece at a time as each is rendered (proxy/render.py `Pieces`). Its headers
    leave before the handler returns, so the request id goes with them here. A client that hangs up
    mid-way ends the writing, as aiohttp ends a whole body's: the answer was accounted for before."""
    response = web.StreamResponse(headers={**headers, REQUEST_ID: request[EXCHANGE].request_id})
    response.content_type = JSON
    if body.length is not None:
        response.content_length = body.length
    # On a closed connection aiohttp's own last write, after the handler, fails too, and lets it be.
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        for part in body.parts:
            await response.write(part)
        await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    ids = [m for m in gw.router.model_ids() if principal is None or principal.allows(m)]
    return json_response(ModelList(data=[ModelObject(id=m) for m in ids]))


async def get_model(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    model_id = request.match_info["model_id"]
    route = gw.router.resolve(model_id)  # 404 model_not_found when nothing serves it
    authorize_model(principal, model_id, route.entry)
    return json_response(ModelObject(id=model_id))


async def healthz(request: web.Request) -> web.Response:
    return json_response(Health())


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[GATEWAY].ready()
    ready = all(checks.values())
    status = "ready" if ready else "draining" if not checks["accepting"] else "not ready"
    return json_response(Readiness(status=status, checks=checks), status=200 if ready else 503)


def metrics_handler(metrics: Metrics, settings: MetricsSettings) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /metrics`, behind `metrics.token` when one is set (compared in constant time)."""
    token = settings.token.get_secret_value().encode() if settings.token is not None else None

    async def handler(request: web.Request) -> web.Response:
        if token is not None:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token):
                raise AuthenticationFailed("/metrics needs the metrics token as Bearer token.",
                                           code="invalid_metrics_token")
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    return handler


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=JSON)


def setup_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    gateway = app[GATEWAY]
    if gateway.settings.metrics.port is None:  # else on its own port (proxy/serve.py)
        app.router.add_get("/metrics", metrics_handler(gateway.metrics, gateway.settings.metrics))
    app.router.add_get("/openapi.json", openapi)
