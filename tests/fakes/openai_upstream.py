"""A fake of OpenAI's `POST /v1/embeddings`, per its API reference.

It checks what it receives (auth header, body shape, parameter types) and answers
with vectors that are a known function of each input (`vectors.vector_for`).
Failures can be scripted: `fail_next(status, n)` or a `delay`.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.vectors import input_key, vector_for

NATIVE_DIMS = 64


@dataclass
class Received:
    model: str
    inputs: list[str | list[int]]
    dimensions: int | None
    encoding_format: str


@dataclass
class FakeOpenAI:
    api_key: str = "sk-upstream-secret-key-1234"
    url: str = ""  # set once it is served: the api_base a gateway config points at
    dims: int = NATIVE_DIMS
    delay: float = 0.0
    refuse: set[str] = field(default_factory=set)  # texts answered with a 400 naming their `input[i]`
    token_factor: int = 1  # usage it reports: this many tokens per word
    cancelled: int = 0  # calls whose client (the gateway) went away before the answer
    failure_rate: float = 0.0  # this share of calls answers 500 at random (seeded: a run repeats)
    received: list[Received] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # protocol violations seen; tests assert it stays empty
    _failures: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    _random: random.Random = field(default_factory=lambda: random.Random(0))

    def fail_next(self, status: int, times: int = 1, body: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` calls with `status` and `body` (any status: a 200 with a scripted body too)."""
        payload = body or {"error": {"message": f"scripted failure {status}", "type": "server_error",
                                     "param": None, "code": None}}
        self._failures.extend([(status, payload, dict(headers or {}))] * times)

    @property
    def inputs_seen(self) -> list[str]:
        return [input_key(x) for r in self.received for x in r.inputs]

    def _error(self, status: int, message: str, param: str | None = None) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
        return web.json_response(body, status=status)

    def _check(self, request: web.Request, body: Any) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.problems.append("bad or missing Authorization header")
            return self._error(401, "Incorrect API key provided: sk-upst****1234.")
        if request.content_type != "application/json":
            self.problems.append(f"content type {request.content_type}")
            return self._error(415, "bad content type")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self.problems.append("body is not an object with a string model")
            return self._error(400, "you must provide a model parameter", "model")
        raw = body.get("input")
        ok_input = isinstance(raw, str) or (
            isinstance(raw, list) and raw and all(isinstance(x, (str, int)) or (isinstance(x, list) and x) for x in raw)
        )
        if not ok_input:
            self.problems.append(f"bad input {raw!r:.80}")
            return self._error(400, "'$.input' is invalid.", "input")
        unknown = set(body) - {"model", "input", "dimensions", "encoding_format", "user"}
        if unknown:
            self.problems.append(f"unknown fields {sorted(unknown)}")
            return self._error(400, f"Unrecognized request argument supplied: {sorted(unknown)[0]}")
        if body.get("encoding_format", "float") not in ("float", "base64"):
            self.problems.append("bad encoding_format")
            return self._error(400, "bad encoding_format", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or not 1 <= dims <= self.dims):
            return self._error(400, f"dimensions must be between 1 and {self.dims}", "dimensions")
        return None

    @staticmethod
    def _inputs(raw: Any) -> list[str | list[int]]:
        if isinstance(raw, str):
            return [raw]
        if all(isinstance(x, int) for x in raw):
            return [raw]
        return list(raw)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            self.problems.append("invalid JSON")
            return self._error(400, "invalid JSON")
        problem = self._check(request, body)
        if problem is not None:
            return problem
        if self._failures:
            status, payload, headers = self._failures.pop(0)
            return web.json_response(payload, status=status, headers=headers)
        if self.failure_rate and self._random.random() < self.failure_rate:
            return self._error(500, "The server had an error while processing your request.")
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        inputs = self._inputs(body["input"])
        for index, item in enumerate(inputs):
            if isinstance(item, str) and item in self.refuse:
                return self._error(400, f"input[{index}] is not allowed here", f"input[{index}]")
        dims = body.get("dimensions") or self.dims
        fmt = body.get("encoding_format", "float")
        self.received.append(Received(body["model"], inputs, body.get("dimensions"), fmt))
        data = []
        for index, item in enumerate(inputs):
            vec = vector_for(item, self.dims)[:dims]
            vec = vec / (sum(float(v) * float(v) for v in vec) ** 0.5)
            emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": index, "embedding": emb})
        tokens = self.token_factor * sum(len(x) if isinstance(x, list) else max(1, len(x.split())) for x in inputs)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.handle)
        return app


def expected_vector(item: str | Sequence[int], dims: int | None = None, native: int = NATIVE_DIMS) -> Any:
    vec = vector_for(item, native)[: dims or native]
    return vec / (sum(float(v) * float(v) for v in vec) ** 0.5)
