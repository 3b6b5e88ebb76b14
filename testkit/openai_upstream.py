"""A fake of OpenAI's `POST /v1/embeddings`, per its API reference, and of every server that speaks it.

It checks what it receives (auth header, body shape, parameter types) and answers
with vectors that are a known function of each input (`vectors.vector_for`).
Failures can be scripted: `fail_next(status, n)` or a `delay`.

`compat` makes it behave like another OpenAI-compatible server (`SERVERS`, one per preset of
providers/presets.py, each from that server's docs or source): its route, its cap on inputs per call,
what it refuses (token ids, base64, `dimensions`), its own body fields and its error body. Anything it
refuses is recorded in `problems` and answered with that server's own error.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from testkit.vectors import input_key, vector_for

NATIVE_DIMS = 64
OPENAI_FIELDS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
ErrorShape = Literal["openai", "tei", "mistral", "detail"]


@dataclass(frozen=True)
class Compat:
    """How one OpenAI-compatible server departs from OpenAI's own API."""

    path: str = "/v1/embeddings"
    max_inputs: int = 2048  # per call; more is refused with `too_many_status`
    too_many_status: int = 400
    token_ids: bool = True  # takes token-id inputs
    base64: bool = True  # answers `encoding_format: base64`
    dimensions: bool = True  # takes OpenAI's `dimensions`
    renormalizes: bool = True  # re-normalises what `dimensions` cut (infinity does not)
    fields: Mapping[str, frozenset[str]] = field(default_factory=dict)  # body fields of its own, and their values
    error_shape: ErrorShape = "openai"

    @property
    def base_path(self) -> str:
        """The path of the api_base a client points at: the route without `/embeddings`."""
        return self.path.removesuffix("/embeddings")

    def error_body(self, status: int, message: str, param: str | None = None) -> Any:
        if self.error_shape == "tei":  # router/src/http/types.rs OpenAICompatErrorResponse
            return {"message": message, "code": status, "type": "validation"}
        if self.error_shape == "mistral":
            return {"object": "error", "message": message, "type": "invalid_request_prompt", "param": param,
                    "code": "3210"}
        if self.error_shape == "detail":  # FastAPI-style servers (Jina, DeepInfra, infinity's validation)
            return {"detail": message}
        return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


JINA_TASKS = frozenset({"retrieval.query", "retrieval.passage", "text-matching", "classification", "separation",
                        "code.query", "code.passage"})

# One per preset of providers/presets.py; the sources are named there.
SERVERS: dict[str, Compat] = {
    "openai": Compat(),
    "mistral": Compat(max_inputs=256, token_ids=False, dimensions=False, error_shape="mistral"),
    "jina": Compat(token_ids=False, base64=False, fields={"task": JINA_TASKS},
                   error_shape="detail"),
    "together": Compat(token_ids=False, base64=False, dimensions=False),
    "fireworks": Compat(path="/inference/v1/embeddings", token_ids=False, base64=False),
    "deepinfra": Compat(path="/v1/openai/embeddings", max_inputs=1024, too_many_status=422, token_ids=False,
                        error_shape="detail"),
    "tei": Compat(max_inputs=32, too_many_status=413, error_shape="tei"),
    "vllm": Compat(),
    "ollama": Compat(token_ids=False),
    "infinity": Compat(path="/embeddings", too_many_status=422, token_ids=False, renormalizes=False,
                       error_shape="detail"),
}


@dataclass
class Received:
    model: str
    inputs: list[str | list[int]]
    dimensions: int | None
    encoding_format: str
    fields: dict[str, Any] = field(default_factory=dict)  # the server's own fields it got (Jina: task)


@dataclass
class FakeOpenAI:
    api_key: str = "sk-upstream-secret-key-1234"  # "" for a server run without one: no Authorization expected
    compat: Compat = field(default_factory=Compat)
    root: str = ""  # set once it is served: scheme, host and port
    url: str = ""  # set once it is served: the api_base a gateway config points at
    dims: int = NATIVE_DIMS
    delay: float = 0.0
    refuse: set[str] = field(default_factory=set)  # texts answered with a 400 naming their `input[i]`
    token_factor: int = 1  # usage it reports: this many tokens per word
    cancelled: int = 0  # calls whose client (the gateway) went away before the answer
    failure_rate: float = 0.0  # this share of calls answers 500 at random (seeded: a run repeats)
    received: list[Received] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # protocol violations seen; tests assert it stays empty
    _failures: list[tuple[int, dict[str, Any] | bytes, dict[str, str]]] = field(default_factory=list)
    _random: random.Random = field(default_factory=lambda: random.Random(0))

    def fail_next(self, status: int, times: int = 1, body: dict[str, Any] | bytes | None = None,
                  headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` calls with `status` and `body` (any status: a 200 with a scripted body too;
        `bytes` go as they are, JSON or not)."""
        payload = body or {"error": {"message": f"scripted failure {status}", "type": "server_error",
                                     "param": None, "code": None}}
        self._failures.extend([(status, payload, dict(headers or {}))] * times)

    @property
    def inputs_seen(self) -> list[str]:
        return [input_key(x) for r in self.received for x in r.inputs]

    def _error(self, status: int, message: str, param: str | None = None) -> web.Response:
        return web.json_response(self.compat.error_body(status, message, param), status=status)

    def _refuse(self, status: int, message: str, param: str | None = None) -> web.Response:
        """What this server does not take: a problem of the gateway's, answered in the server's words."""
        self.problems.append(message)
        return self._error(status, message, param)

    def _check(self, request: web.Request, body: Any) -> web.Response | None:
        expected = f"Bearer {self.api_key}" if self.api_key else None
        if request.headers.get("Authorization") != expected:
            self.problems.append("bad, missing or unexpected Authorization header")
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
        unknown = set(body) - OPENAI_FIELDS - set(self.compat.fields)
        if unknown:
            self.problems.append(f"unknown fields {sorted(unknown)}")
            return self._error(400, f"Unrecognized request argument supplied: {sorted(unknown)[0]}")
        if body.get("encoding_format", "float") not in ("float", "base64"):
            self.problems.append("bad encoding_format")
            return self._error(400, "bad encoding_format", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or not 1 <= dims <= self.dims):
            return self._error(400, f"dimensions must be between 1 and {self.dims}", "dimensions")
        return self._compat_check(body)

    def _compat_check(self, body: dict[str, Any]) -> web.Response | None:
        """What this particular server refuses of an otherwise valid OpenAI request."""
        compat, inputs = self.compat, self._inputs(body["input"])
        if len(inputs) > compat.max_inputs:
            return self._refuse(compat.too_many_status,
                                f"batch size {len(inputs)} > maximum allowed batch size {compat.max_inputs}", "input")
        if not compat.token_ids and any(not isinstance(item, str) for item in inputs):
            return self._refuse(400, "invalid input type: token ids are not accepted", "input")
        if not compat.base64 and body.get("encoding_format") == "base64":
            return self._refuse(400, "encoding_format base64 is not supported", "encoding_format")
        if not compat.dimensions and "dimensions" in body:
            return self._refuse(400, "dimensions is not supported", "dimensions")
        for name, values in compat.fields.items():
            if name in body and body[name] not in values:
                return self._refuse(400, f"{name} {body[name]!r} is not one of {sorted(values)}", name)
        return None

    def refusal(self, status: int, message: str) -> Any:
        """This server's own error body, for `fail_next`."""
        return self.compat.error_body(status, message)

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
            if isinstance(payload, bytes):
                return web.Response(body=payload, status=status, headers=headers, content_type="application/json")
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
        own = {name: body[name] for name in self.compat.fields if name in body}
        self.received.append(Received(body["model"], inputs, body.get("dimensions"), fmt, own))
        data = []
        for index, item in enumerate(inputs):
            vec = vector_for(item, self.dims)[:dims]
            if dims == self.dims or self.compat.renormalizes:
                vec = vec / (sum(float(v) * float(v) for v in vec) ** 0.5)
            emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": index, "embedding": emb})
        tokens = self.token_factor * sum(len(x) if isinstance(x, list) else max(1, len(x.split())) for x in inputs)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(self.compat.path, self.handle)
        return app


def expected_vector(item: str | Sequence[int], dims: int | None = None, native: int = NATIVE_DIMS) -> Any:
    vec = vector_for(item, native)[: dims or native]
    return vec / (sum(float(v) * float(v) for v in vec) ** 0.5)
