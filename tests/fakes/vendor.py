"""What every fake vendor shares: a request log, a problems list the test asserts empty, scripted
failures (status, body, headers such as Retry-After), a delay, connection resets, and serving itself.

A fake implements one vendor's documented shape in a subclass: `routes()` names its paths, and
each handler calls `self.checked(request)` first, which records a problem and answers the vendor's
own error when the auth header is wrong, then plays any scripted failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from testkit.servers import ThreadedServer
from testkit.vectors import vector_for

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Scripted:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # drop the connection instead of answering


@dataclass
class FakeVendor:
    """Base of the vendor fakes. Subclasses set the auth header they expect and their error body shape."""

    api_key: str = "vendor-secret-key-0123456789"
    url: str = ""  # the fake's base URL once served
    dims: int = 64
    delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)  # every decoded body that passed the checks
    received: int = 0  # every request that reached a route, scripted failures and refusals included
    problems: list[str] = field(default_factory=list)  # protocol violations seen; tests assert it stays empty
    _script: list[Scripted] = field(default_factory=list)

    # -- what subclasses define ----------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Handler]]:
        raise NotImplementedError

    def auth_ok(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def auth_refusal(self, request: web.Request, body: bytes) -> web.Response | None:
        """The vendor's answer to credentials it refuses, or None. `body`: what a request signature covers."""
        return None if self.auth_ok(request) else self.auth_refused()

    def error_body(self, status: int, message: str) -> Any:
        return {"message": message}

    def auth_refused(self) -> web.Response:
        """What the vendor answers a wrong or missing credential."""
        return self.error(401, "invalid api key")

    def texts_of(self, call: Any) -> list[str]:
        """The texts in one accepted request body, for vendors that take text."""
        raise NotImplementedError

    def texts_seen(self) -> list[str]:
        return [text for call in self.calls for text in self.texts_of(call)]

    def error_headers(self, status: int) -> dict[str, str]:
        return {}

    # -- scripting -----------------------------------------------------------------------------

    def fail_next(self, status: int, times: int = 1, body: Any = None, headers: dict[str, str] | None = None) -> None:
        payload = body if body is not None else self.error_body(status, f"scripted failure {status}")
        self._script.extend([Scripted(status, payload, {**self.error_headers(status), **(headers or {})})] * times)

    def reset_next(self, times: int = 1) -> None:
        self._script.extend([Scripted(0, None, reset=True)] * times)

    # -- helpers for handlers ------------------------------------------------------------------

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def error(self, status: int, message: str) -> web.Response:
        return web.json_response(self.error_body(status, message), status=status, headers=self.error_headers(status))

    async def checked(self, request: web.Request) -> tuple[Any, web.StreamResponse | None]:
        """The decoded JSON body, or the response to send instead (auth failure, scripted failure)."""
        self.received += 1
        raw = await request.read()
        refusal = self.auth_refusal(request, raw)
        if refusal is not None:
            self.problem(f"bad or missing credentials on {request.path}")
            return None, self.auth_refused()

            return None, refusal
        if request.content_type != "application/json":
            self.problem(f"content type {request.content_type}")
            return None, self.error(415, "bad content type")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.problem("invalid JSON")
            return None, self.error(400, "invalid JSON")
        if self._script:
            scripted = self._script.pop(0)
            if scripted.reset:
                assert request.transport is not None
                request.transport.close()  # the client sees a reset connection, no answer
                return body, web.Response(status=500)
            return body, web.json_response(scripted.body, status=scripted.status, headers=scripted.headers)
        if self.delay:
            await asyncio.sleep(self.delay)
        return body, None

    @staticmethod
    def text_list_problem(body: Any, fields: frozenset[str], texts_key: str) -> str | None:
        """What every vendor that takes a list of texts refuses first: not an object, an unknown field, no
        model, no texts or an empty one."""
        if not isinstance(body, dict):
            return "body is not an object"
        unknown = sorted(set(body) - fields)
        if unknown:
            return f"unknown field {unknown[0]}"
        model, texts = body.get("model"), body.get(texts_key)
        if not isinstance(model, str) or not model:
            return "model is required"
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return f"{texts_key} must be a non-empty list of non-empty strings"
        return None

    def vector(self, item: str | Sequence[int], dims: int | None = None, normalized: bool = True) -> list[float]:
        """The known vector of `item`, cut to `dims` (unit length again unless `normalized` is False)."""
        vec = vector_for(item, self.dims)[: dims or self.dims]
        if normalized:
            vec = vec / float((vec.astype("float64") ** 2).sum() ** 0.5)
        return [float(v) for v in vec]

    def app(self) -> web.Application:
        app = web.Application()
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        return app


def cut_words(text: str, limit: int, truncate: str) -> str | None:
    """`text` within `limit` words (standing in for a model's token limit) as a vendor's `truncate` does it:
    None for NONE (refused); END or RIGHT drop the end, START or LEFT the start."""
    words = text.split()
    if len(words) <= limit:
        return text
    if truncate == "NONE":
        return None
    return " ".join(words[:limit] if truncate in ("END", "RIGHT") else words[-limit:])


@contextmanager
def serving(fake: FakeVendor, prefix: str = "") -> Iterator[FakeVendor]:
    """Serve `fake` on a free port for one test; fails the test if the gateway sent it a bad request."""
    server = ThreadedServer(fake.app).start()
    fake.url = server.url + prefix
    try:
        yield fake
    finally:
        server.stop()
    assert fake.problems == [], f"the gateway sent {type(fake).__name__} bad requests: {fake.problems}"


@dataclass
class OtherOrigin:
    """A server on another origin that an upstream redirects to: it records the headers of every request
    that reaches it (a credential among them is a leak) and answers 200 with an empty object."""

    url: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)

    async def record(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        return web.json_response({})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.record)
        return app


@contextmanager
def other_origin() -> Iterator[OtherOrigin]:
    origin = OtherOrigin()
    server = ThreadedServer(origin.app).start()
    origin.url = server.url
    try:
        yield origin
    finally:
        server.stop()
