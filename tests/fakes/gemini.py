"""A fake of the Gemini API's `POST /v1beta/models/{model}:batchEmbedContents`, as Google documents it.

It checks the key (the `x-goog-api-key` header only: never a `?key=` in the URL, nor a Bearer token) and every
field: `requests` (1 to 100), each with `model` equal to `models/{model}` of the path, `content.parts` one
non-empty text, `taskType` and `outputDimensionality` (from 1 to the native size, `dims`) on the models that
take them only. A taskType outside Google's TaskType values (a client's own input_type, passed through) is
answered with Google's 400, as the client's mistake, not recorded as the gateway's. A wrong key is answered
as Google does: 400 INVALID_ARGUMENT with an ErrorInfo reason API_KEY_INVALID. Errors are `{"error": {"code",
"message", "status"}}`. A taskType changes the vector (the known vector of "TASK|text"); a reduced size is
the head of the full unit vector, not re-normalised, as Gemini answers it. No token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.vendor import FakeVendor

MAX_REQUESTS = 100
TASK_TYPES = frozenset({"TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
                        "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION",
                        "CODE_RETRIEVAL_QUERY"})
REQUEST_FIELDS = frozenset({"model", "content", "taskType", "title", "outputDimensionality"})
STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def takes_options(model: str) -> bool:
    """taskType and outputDimensionality: not on the earlier embedding-001."""
    return model.startswith(("gemini-embedding-", "text-embedding-004"))


@dataclass
class FakeGemini(FakeVendor):
    api_key: str = "AIzaSy-gemini-secret-key-0123456789abc"

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/v1beta/models/{model}:batchEmbedContents", self.batch_embed)]

    def auth_ok(self, request: web.Request) -> bool:
        return (request.headers.get("x-goog-api-key") == self.api_key and "key" not in request.query
                and "Authorization" not in request.headers)

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN")}}

    def auth_refused(self) -> web.Response:
        body = self.error_body(400, "API key not valid. Please pass a valid API key.")
        body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                     "domain": "googleapis.com",
                                     "metadata": {"service": "generativelanguage.googleapis.com"}}]
        return web.json_response(body, status=400)

    def texts_of(self, call: Any) -> list[str]:
        return [request["content"]["parts"][0]["text"] for request in call["requests"]]

    def expected(self, text: str, task: str | None = None, dims: int | None = None) -> list[float]:
        """The row Gemini answers for `text` under `task`, cut to `dims` and not re-normalised."""
        return self.vector(f"{task}|{text}" if task else text, dims, normalized=False)

    async def batch_embed(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.checked(request)
        if early is not None:
            return early
        model = request.match_info["model"]
        unknown = self.unknown_task(body)
        if unknown is not None:  # the client's own input_type, passed through: Google's answer, no problem of ours
            return self.error(400, unknown)
        problem = self.body_problem(body, model, self.dims)
        if problem is not None:
            self.problem(problem)
            return self.error(400, f"* BatchEmbedContentsRequest.{problem}\n")
        self.calls.append(body)
        return web.json_response({"embeddings": [
            {"values": self.expected(self.texts_of({"requests": [item]})[0], item.get("taskType"),
                                     item.get("outputDimensionality"))}
            for item in body["requests"]]})

    @staticmethod
    def unknown_task(body: Any) -> str | None:
        items = body.get("requests") if isinstance(body, dict) else None
        for index, item in enumerate(items if isinstance(items, list) else []):
            task = item.get("taskType") if isinstance(item, dict) else None
            if task is not None and task not in TASK_TYPES:
                return (f"Invalid value at 'requests[{index}].task_type' "
                        f"(type.googleapis.com/google.ai.generativelanguage.v1beta.TaskType), {task!r}")
        return None

    @staticmethod
    def body_problem(body: Any, model: str, native: int) -> str | None:
        """What Gemini would refuse in this body, or None."""
        if not isinstance(body, dict) or set(body) != {"requests"}:
            return "body must be exactly {requests}"
        requests = body["requests"]
        if not isinstance(requests, list) or not requests:
            return "requests: must be a non-empty list"
        if len(requests) > MAX_REQUESTS:
            return f"requests: at most {MAX_REQUESTS} requests can be in one batch"
        for index, item in enumerate(requests):
            problem = FakeGemini.request_problem(item, model, native)
            if problem is not None:
                return f"requests[{index}].{problem}"
        return None

    @staticmethod
    def request_problem(item: Any, model: str, native: int) -> str | None:
        if not isinstance(item, dict) or not set(item) <= REQUEST_FIELDS:
            return f"unknown fields {sorted(set(item) - REQUEST_FIELDS) if isinstance(item, dict) else item!r}"
        if item.get("model") != f"models/{model}":
            return f"model {item.get('model')!r} must match the batch's models/{model}"
        parts = item.get("content", {}).get("parts") if isinstance(item.get("content"), dict) else None
        if not (isinstance(parts, list) and len(parts) == 1 and isinstance(parts[0], dict)
                and set(parts[0]) == {"text"} and isinstance(parts[0]["text"], str) and parts[0]["text"]):
            return "content: must be one part with a non-empty text"
        task, size = item.get("taskType"), item.get("outputDimensionality")
        if task is not None and not takes_options(model):
            return f"task_type: {task!r} is not valid for {model}"
        if size is not None and (not isinstance(size, int) or not 1 <= size <= native or not takes_options(model)):
            return f"output_dimensionality: {size!r} is not valid for {model}"
        return None
