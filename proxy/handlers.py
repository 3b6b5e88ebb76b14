"""The OpenAI-facing HTTP handlers: parse, call a plain async function, render. Nothing more."""

from __future__ import annotations

import time
from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from proxy.auth import Principal, authorize_model
from proxy.cache import CacheControl
from proxy.embeddings import create_embeddings
from proxy.errors import GatewayError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from proxy.gateway import Gateway
from proxy.request import parse_embedding_request
from proxy.routing import metric_label

GATEWAY = web.AppKey("gateway", Gateway)

JSON = "application/json"
Body = TypeVar("Body", bound=BaseModel)


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON, headers=headers)


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
    try:
        return model.model_validate(orjson.loads(await read_json_body(request) or b"{}"))
    except orjson.JSONDecodeError as err:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from err
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or None
        raise InvalidRequest(f"{where or 'body'}: {problem['msg']}", param=where) from err


async def authenticate(request: web.Request) -> Principal | None:
    return await request.app[GATEWAY].auth.authenticate(request.headers.get("Authorization"))


async def embeddings(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    started = time.perf_counter()
    model = "unknown"
    status = 500
    principal = parsed = None
    try:
        principal = await authenticate(request)  # 401 before any 400, as OpenAI does
        parsed = parse_embedding_request(await read_json_body(request))
        model = metric_label(gw.router, parsed.model)
        cache_control = CacheControl.parse(request.headers.get("Cache-Control"))
        result = await create_embeddings(gw, parsed, cache_control, principal)
        status = 200
    except GatewayError as err:
        status = err.status
        if principal is not None and "x-ratelimit-limit-requests" not in err.headers:
            err.headers.update(await gw.quotas.headers(principal, parsed.user if parsed else None))
        raise
    finally:
        gw.metrics.requests.labels(model, str(status)).inc()
        if status == 200:
            gw.metrics.latency.labels(model).observe(time.perf_counter() - started)
    return web.Response(body=result.body, content_type=JSON, headers=result.headers)


def _model_object(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "embedgate"}


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    ids = [m for m in gw.router.model_ids() if principal is None or principal.allows(m)]
    return json_response({"object": "list", "data": [_model_object(m) for m in ids]})


async def get_model(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    principal = await authenticate(request)
    model_id = request.match_info["model_id"]
    route = gw.router.resolve(model_id)  # 404 model_not_found when nothing serves it
    authorize_model(principal, model_id, route.entry)
    return json_response(_model_object(model_id))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[GATEWAY].ready()
    ready = all(checks.values())
    status = "ready" if ready else "draining" if not checks["accepting"] else "not ready"
    return json_response({"status": status, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def setup_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
