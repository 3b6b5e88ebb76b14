"""A fake Azure OpenAI resource: both embeddings routes, as Azure documents them.

- `POST /openai/deployments/{deployment}/embeddings?api-version=...`: the path names the deployment,
  `api-version` is required; the documented body is input, user, input_type, encoding_format, dimensions
  (no `model`).
- `POST /openai/v1/embeddings`: no api-version; `model` in the body is the deployment's name.

Credentials are the `api-key` header, or `Authorization: Bearer <Entra ID token>` when `entra_token` is set.
Answers are OpenAI's shape with `self.vector(...)` rows; errors are `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes.vendor import FakeVendor

API_VERSION = "2024-10-21"
MAX_INPUTS = 2048
DEPLOYMENTS_FIELDS = frozenset({"input", "user", "input_type", "encoding_format", "dimensions"})
V1_FIELDS = DEPLOYMENTS_FIELDS | {"model"}


@dataclass
class FakeAzure(FakeVendor):
    api_key: str = "azure-secret-key-0123456789abcdef"
    api_version: str = API_VERSION
    # deployment name → the model deployed there (only text-embedding-3 models take `dimensions`)
    deployments: dict[str, str] = field(default_factory=lambda: {"emb-small": "text-embedding-3-small",
                                                                 "emb-ada": "text-embedding-ada-002"})
    entra_token: str | None = None  # set: only `Authorization: Bearer <token>` is accepted
    routed: list[str] = field(default_factory=list)  # the deployment each accepted call went to

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/openai/deployments/{deployment}/embeddings", self.deployments_route),
                ("POST", "/openai/v1/embeddings", self.v1_route)]

    def auth_ok(self, request: web.Request) -> bool:
        if self.entra_token is not None:
            return (request.headers.get("Authorization") == f"Bearer {self.entra_token}"
                    and "api-key" not in request.headers)
        return request.headers.get("api-key") == self.api_key and "Authorization" not in request.headers

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"code": str(status), "message": message}}

    async def deployments_route(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.checked(request)
        if early is not None:
            return early
        if request.query.get("api-version") != self.api_version:
            self.problem(f"api-version {request.query.get('api-version')!r}, expected {self.api_version!r}")
            return self.error(404, "Resource not found")
        return self.answer(body, request.match_info["deployment"], DEPLOYMENTS_FIELDS)

    async def v1_route(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.checked(request)
        if early is not None:
            return early
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self.problem("v1 body without a string model")
            return self.error(400, "you must provide a model parameter")
        return self.answer(body, body["model"], V1_FIELDS)

    def answer(self, body: Any, deployment: str, fields: frozenset[str]) -> web.Response:
        if deployment not in self.deployments:
            self.problem(f"unknown deployment {deployment!r}")
            return self.error(404, "The API deployment for this resource does not exist.")
        problem = self.body_problem(body, fields, self.deployments[deployment])
        if problem is not None:
            self.problem(problem)
            return self.error(400, problem)
        self.calls.append(body)
        self.routed.append(deployment)
        inputs = body["input"]
        dims = body.get("dimensions") or self.dims
        rows = [self.vector(item, dims) for item in inputs]
        encode = body.get("encoding_format", "float") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(row, "<f4").tobytes()).decode() if encode else row}
                for i, row in enumerate(rows)]
        tokens = sum(len(x) if isinstance(x, list) else len(x.split()) for x in inputs)
        return web.json_response({"object": "list", "data": data, "model": self.deployments[deployment],
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def body_problem(self, body: Any, fields: frozenset[str], model: str) -> str | None:
        """What Azure would refuse in this body (the gateway sends lists only), or None."""
        if not isinstance(body, dict):
            return "body is not an object"
        unknown = sorted(set(body) - fields)
        if unknown:
            return f"Unrecognized request argument supplied: {unknown[0]}"
        inputs = body.get("input")
        if not isinstance(inputs, list) or not inputs or not all(_one_input(x) for x in inputs):
            return f"'$.input' is invalid: {inputs!r:.60}"
        if len(inputs) > MAX_INPUTS:
            return f"Too many inputs. The max number of inputs is {MAX_INPUTS}."
        if body.get("encoding_format", "float") not in ("float", "base64"):
            return "encoding_format must be float or base64"
        dims = body.get("dimensions")
        if dims is not None and (not model.startswith("text-embedding-3")
                                 or not isinstance(dims, int) or not 1 <= dims <= self.dims):
            return f"dimensions={dims!r} is not supported by {model}"
        return None


def _one_input(item: Any) -> bool:
    if isinstance(item, str):
        return bool(item)
    return isinstance(item, list) and bool(item) and all(isinstance(t, int) and t >= 0 for t in item)
