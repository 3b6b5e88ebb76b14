"""`create_app(settings)`: the aiohttp application, its error middleware and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from proxy.admin import setup_admin_routes
from proxy.batch_handlers import setup_batch_routes
from proxy.batch_worker import BatchWorkers
from proxy.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_body,
)
from proxy.gateway import Gateway
from proxy.handlers import GATEWAY, JSON, OPENAPI, metrics_handler, setup_routes
from proxy.observe import EXCHANGE, REQUEST_ID, Exchange
from proxy.openapi import build_document
from proxy.settings import Settings
from proxy.tracing import NO_SPAN, Tracing

log = logging.getLogger("embedgate")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: GatewayError) -> web.Response:
    return web.Response(body=error_body(err), status=err.status, content_type=JSON, headers=err.headers)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.",
                                headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[GATEWAY].settings.server.max_body_bytes
        return PayloadTooLarge(f"Request body is too large; the limit is {limit} bytes.")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
    error = GatewayError(exc.reason)
    error.status, error.type = exc.status, "invalid_request_error" if exc.status < 500 else "server_error"
    return error


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as OpenAI's error shape: never HTML, never a traceback."""
    try:
        return await handler(request)
    except GatewayError as err:
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc, request))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(InternalError("The server had an error processing your request."))


@web.middleware
async def observed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Around everything else: the request id (echoed in `x-request-id`), the trace span, metrics, one log line."""
    gw = request.app[GATEWAY]
    exchange = Exchange.begin(request)
    request[EXCHANGE] = exchange
    traced = gw.tracing.enabled and not exchange.quiet
    scope = gw.tracing.request(_span_name(request), request.headers) if traced else NO_SPAN
    with scope as span:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # what openai_errors lets through (below 400)
            exchange.status = exc.status
            exc.headers[REQUEST_ID] = exchange.request_id
            raise
        else:
            exchange.status = response.status
        finally:  # CancelledError too: the client hung up, logged as 499
            exchange.ended = time.perf_counter()
            if traced:  # the span's attributes must be set before it ends
                exchange.finish(gw.metrics, gw.access, span, traced)
            else:  # after the answer is written: metrics and the log line are not the client's wait
                asyncio.get_running_loop().call_soon(exchange.finish, gw.metrics, gw.access, span, traced)
    response.headers[REQUEST_ID] = exchange.request_id
    return response


def _span_name(request: web.Request) -> str:
    """`POST /v1/embeddings`: the route's template, never a raw path (span names must stay few)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical}" if resource is not None else request.method


BATCH_WORKERS = web.AppKey("batch_workers", BatchWorkers)


async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.store.warm_up()
    gateway.start()
    # Beside the gateway, not inside it: the workers run the pipeline (proxy/embeddings.py), which needs the
    # Gateway built first.
    workers = app[BATCH_WORKERS] = BatchWorkers(gateway)
    workers.start()
    yield
    await workers.aclose()
    await gateway.aclose()


def create_app(settings: Settings, tracing: Tracing | None = None) -> web.Application:
    """`tracing`: by default what `settings.tracing` asks for."""
    app = web.Application(client_max_size=settings.server.max_body_bytes, middlewares=[observed, openai_errors])
    app[GATEWAY] = gateway = Gateway(settings, tracing)
    app[OPENAPI] = orjson.dumps(build_document(gateway.router.model_ids(), gateway.auth.enabled))
    app.cleanup_ctx.append(_gateway_ctx)
    setup_routes(app)
    setup_admin_routes(app)
    setup_batch_routes(app)
    return app


def create_metrics_app(gateway: Gateway) -> web.Application:
    """`/metrics` alone, for `metrics.port`: the gateway's own app is closed by its own runner."""
    app = web.Application(middlewares=[openai_errors])
    app[GATEWAY] = gateway
    app.router.add_get("/metrics", metrics_handler(gateway.metrics, gateway.settings.metrics))
    return app
