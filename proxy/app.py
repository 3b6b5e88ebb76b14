"""`create_app(settings)`: the aiohttp application, its error middleware and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from proxy.admin import setup_admin_routes
from proxy.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_body,
)
from proxy.gateway import Gateway
from proxy.handlers import GATEWAY, JSON, OPENAPI, setup_routes
from proxy.openapi import build_document
from proxy.settings import Settings

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


async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.store.warm_up()
    gateway.start()
    yield
    await gateway.aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.server.max_body_bytes, middlewares=[openai_errors])
    app[GATEWAY] = gateway = Gateway(settings)
    app[OPENAPI] = orjson.dumps(build_document(gateway.router.model_ids(), gateway.auth.enabled))
    app.cleanup_ctx.append(_gateway_ctx)
    setup_routes(app)
    setup_admin_routes(app)
    return app
