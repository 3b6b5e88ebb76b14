"""A fake Amazon Bedrock runtime: `POST /model/{modelId}/invoke`, as AWS documents it, for embedding models.

It checks what AWS checks: the SigV4 signature, re-computed from what arrived with the secret it holds
(`tests.fakes.sigv4`; a bad one is refused 403 as AWS does), the security token of temporary credentials,
the model id (one path segment, percent-encoded as AWS SDKs send it), and every body field of the model's
family (Titan Text Embeddings V2 and G1, Cohere Embed v3 and v4). It answers as Bedrock does, errors
included: `{"message"}` with the error's name in `x-amzn-ErrorType`.

Rows are the known vectors of `testkit.vectors`, cut to the size asked; at unit length only when the
model is asked to normalise (Titan V2), else `scale` times that (G1 and Cohere rows are not unit length).
It counts calls in flight, so a test can see the fan-out and its bound.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.fakes.cohere import texts_problem
from tests.fakes.sigv4 import Refusal, verify
from tests.fakes.vendor import FakeVendor, cut_words

REGION = "us-east-1"
SERVICE = "bedrock"
ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
               408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
               500: "InternalServerException", 503: "ServiceUnavailableException"}
MODELS = {"amazon.titan-embed-text-v2:0": "titan-v2", "amazon.titan-embed-text-v1": "titan-v1",
          "cohere.embed-english-v3": "cohere-v3", "cohere.embed-multilingual-v3": "cohere-v3",
          "cohere.embed-v4:0": "cohere-v4"}
NATIVE = {"titan-v2": 1024, "titan-v1": 1536, "cohere-v3": 1024, "cohere-v4": 1536}
TITAN_V2_DIMENSIONS = frozenset({256, 512, 1024})
MAX_COHERE_V3_CHARACTERS = 2048
_PATH = re.compile(r"^/model/([^/?]+)/invoke$")


def _error_type(name: str) -> str:
    return f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"


@dataclass
class FakeBedrock(FakeVendor):
    access_key: str = "AKIAFAKEBEDROCK00001"
    secret_key: str = "fake/bedrock+secret-0123456789abcdefghijklmn"
    session_token: str | None = None  # set: only temporary credentials with this token are accepted
    region: str = REGION
    dims: int = 1536  # the largest native size: every model's rows are cut from it
    scale: float = 3.0
    context: int = 512  # words per text, standing in for the model's token limit
    routed: list[str] = field(default_factory=list)  # the model id of each accepted call
    inflight: int = 0
    max_inflight: int = 0

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/{tail:.*}", self.invoke)]

    def error_body(self, status: int, message: str) -> Any:
        return {"message": message}

    def error_headers(self, status: int) -> dict[str, str]:
        return {"x-amzn-ErrorType": _error_type(ERROR_TYPES.get(status, "InternalServerException"))}

    def auth_refusal(self, request: web.Request, body: bytes) -> web.Response | None:
        refusal = verify(request.method, request.raw_path, request.headers, body,
                         secrets={self.access_key: self.secret_key}, service=SERVICE, region=self.region)
        if refusal is None and request.headers.get("X-Amz-Security-Token") != self.session_token:
            refusal = Refusal("UnrecognizedClientException", "The security token included in the request is invalid.")
        if refusal is None:
            return None
        self.problem(f"{refusal.error_type}: {refusal.message}")
        return web.json_response({"message": refusal.message}, status=403,
                                 headers={"x-amzn-ErrorType": _error_type(refusal.error_type)})

    def texts_of(self, call: Any) -> list[str]:
        return list(call.get("texts", [call.get("inputText")]))

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._invoke(request)
        finally:
            self.inflight -= 1

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.checked(request)
        if early is not None:
            return early
        match = _PATH.match(request.raw_path)
        if match is None:
            self.problem(f"no such operation: {request.raw_path}")
            return web.json_response({"message": "UnknownOperationException"}, status=404)
        model = unquote(match.group(1))
        if match.group(1) != quote(model, safe=""):
            self.problem(f"model id {match.group(1)!r} is not encoded as AWS SDKs encode it")
        if request.headers.get("Accept", "application/json") != "application/json":
            self.problem(f"Accept {request.headers['Accept']!r}")
        family = MODELS.get(model)
        if family is None:
            self.problem(f"unknown model id {model!r}")
            return self.error(400, "The provided model identifier is invalid.")
        problem = FAMILY_CHECKS[family](body)
        if problem is not None:
            self.problem(f"{model}: {problem}")
            return self.error(400, f"Malformed input request: {problem}, please reformat your input and try again.")
        self.calls.append(body)
        self.routed.append(model)
        if self.delay:
            await asyncio.sleep(self.delay)  # inside the in-flight count: the fan-out shows
        return self.titan(body, family) if family.startswith("titan") else self.cohere(body, family)

    def titan(self, body: dict[str, Any], family: str) -> web.Response:
        text = body["inputText"]
        words = len(text.split())
        if words > self.context:
            return self.error(400, f"400 Bad Request: Too many input tokens. Max input tokens: {self.context}, "
                                   f"request input token count: {words}")
        unit = family == "titan-v2" and body.get("normalize", True)
        row = self.row(text, body.get("dimensions") or NATIVE[family], unit)
        answer: dict[str, Any] = {"embedding": row, "inputTextTokenCount": words}
        if family == "titan-v2":
            answer["embeddingsByType"] = {"float": row}
        return web.json_response(answer, headers={"X-Amzn-Bedrock-Input-Token-Count": str(words)})

    def cohere(self, body: dict[str, Any], family: str) -> web.Response:
        width = body.get("output_dimension") or NATIVE[family]
        if family == "cohere-v3" and any(len(text) > MAX_COHERE_V3_CHARACTERS for text in body["texts"]):
            return self.error(400, f"Malformed input request: #/texts: expected maxLength: "
                                   f"{MAX_COHERE_V3_CHARACTERS}, please reformat your input and try again.")
        rows = []
        for text in body["texts"]:
            kept = cut_words(text, self.context, body.get("truncate", "NONE"))
            if kept is None:
                return self.error(400, f"Malformed input request: a text is longer than {self.context} tokens "
                                       "and truncate is NONE, please reformat your input and try again.")
            rows.append(self.row(kept, width, False))
        answer: dict[str, Any] = {"id": f"fake-{len(self.calls)}", "texts": body["texts"]}
        if "embedding_types" in body:
            answer |= {"embeddings": {"float": rows}, "response_type": "embeddings_by_type"}
        else:
            answer |= {"embeddings": rows, "response_type": "embeddings_floats"}
        return web.json_response(answer)

    def row(self, text: str, width: int, unit: bool) -> list[float]:
        return self.vector(text, width) if unit else [v * self.scale for v in self.vector(text, width)]


def _fields(body: Any, allowed: frozenset[str]) -> str | None:
    if not isinstance(body, dict):
        return "body is not an object"
    extra = sorted(set(body) - allowed)
    return f"#: extraneous key [{extra[0]}] is not permitted" if extra else None


def titan_v2_problem(body: Any) -> str | None:
    problem = _fields(body, frozenset({"inputText", "dimensions", "normalize", "embeddingTypes"}))
    if problem is None and (not isinstance(body.get("inputText"), str) or not body["inputText"]):
        problem = "#/inputText: expected a non-empty string"
    if problem is None and body.get("dimensions", 1024) not in TITAN_V2_DIMENSIONS:
        problem = f"#/dimensions: {body['dimensions']!r} is not a valid enum value"
    if problem is None and not isinstance(body.get("normalize", True), bool):
        problem = "#/normalize: expected type: Boolean"
    return problem


def titan_v1_problem(body: Any) -> str | None:
    problem = _fields(body, frozenset({"inputText"}))
    if problem is None and (not isinstance(body.get("inputText"), str) or not body["inputText"]):
        problem = "#/inputText: expected a non-empty string"
    return problem


def _cohere_problem(body: Any, allowed: frozenset[str], truncations: frozenset[str]) -> str | None:
    return _fields(body, allowed) or texts_problem(body, truncations, ["float"])


def cohere_v3_problem(body: Any) -> str | None:
    return _cohere_problem(body, frozenset({"texts", "input_type", "truncate", "embedding_types"}),
                           frozenset({"NONE", "START", "END"}))


def cohere_v4_problem(body: Any) -> str | None:
    problem = _cohere_problem(body, frozenset({"texts", "input_type", "truncate", "embedding_types",
                                               "output_dimension", "max_tokens"}), frozenset({"NONE", "LEFT", "RIGHT"}))
    if problem is None and body.get("output_dimension", 1536) not in (256, 512, 1024, 1536):
        problem = f"#/output_dimension: {body['output_dimension']!r} is not a valid enum value"
    return problem


FAMILY_CHECKS = {"titan-v2": titan_v2_problem, "titan-v1": titan_v1_problem, "cohere-v3": cohere_v3_problem,
                 "cohere-v4": cohere_v4_problem}
