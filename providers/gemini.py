"""Google's Gemini API embeddings: `POST {api_base}/v1beta/models/{model}:batchEmbedContents`, texts only.

As documented at https://ai.google.dev/api/embeddings (models.batchEmbedContents). The key goes in the
`x-goog-api-key` header, never in the URL. Request: `requests` (at most 100), each `{model: "models/{model}",
content: {parts: [{text}]}, taskType, outputDimensionality}`. Answer: `embeddings: [{values}]` in request
order, with no token count (the gateway counts with cl100k). Errors are Google's
`{"error": {"code", "message", "status", "details"}}`, which `providers.http` reads.

Gemini cuts a reduced `outputDimensionality` from the full vector without re-normalising it (only the
native size is unit length), so every row is L2-normalised here, as OpenAI clients expect.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal
from urllib.parse import quote

from providers.base import (
    ANY_DIMENSIONS,
    DOCUMENT,
    QUERY,
    Capabilities,
    EmbedBatch,
    EmbedResult,
    bad_response,
    normalize,
    number_rows,
)
from providers.http import HttpClient
from providers.options import DeploymentOptions
from providers.remote import RemoteProvider

DEFAULT_API_BASE = "https://generativelanguage.googleapis.com"
MAX_INPUTS = 100  # requests per batchEmbedContents call
_TASK_TYPES = {QUERY: "RETRIEVAL_QUERY", DOCUMENT: "RETRIEVAL_DOCUMENT"}
# Models that take taskType and any outputDimensionality from 1 to native (gemini-embedding-001: 3072,
# text-embedding-004: 768); the earlier embedding-001 takes neither.
_MODERN_PREFIXES = ("gemini-embedding-", "text-embedding-004")


class GeminiOptions(DeploymentOptions):
    provider: Literal["gemini"] = "gemini"
    key_required = "the Gemini API authenticates every call with x-goog-api-key"


def model_id(model: str) -> str:
    """The bare model id: a configured `models/gemini-embedding-001` and `gemini-embedding-001` are one."""
    return model.removeprefix("models/")


def is_modern(model: str) -> bool:
    return model_id(model).startswith(_MODERN_PREFIXES)


def task_type(input_type: str | None) -> str | None:
    """query/document in Gemini's words; Gemini's own task types (CLUSTERING, CODE_RETRIEVAL_QUERY...) as
    they are; None leaves Gemini's default."""
    return None if input_type is None else _TASK_TYPES.get(input_type, input_type)


def endpoint(api_base: str, model: str) -> str:
    return f"{api_base.rstrip('/')}/v1beta/models/{quote(model_id(model), safe='')}:batchEmbedContents"


def to_payload(batch: EmbedBatch) -> dict[str, Any]:
    texts = [x for x in batch.inputs if isinstance(x, str)]
    if len(texts) != len(batch.inputs):  # capabilities say text only: the dispatcher decodes token ids
        raise TypeError("the Gemini provider takes text inputs only")
    common: dict[str, Any] = {"model": f"models/{model_id(batch.model)}"}
    task = task_type(batch.input_type)
    if task is not None:
        common["taskType"] = task
    if batch.dimensions is not None:
        common["outputDimensionality"] = batch.dimensions
    return {"requests": [{**common, "content": {"parts": [{"text": text}]}} for text in texts]}


def from_payload(body: Any, expected: int) -> EmbedResult:
    try:
        rows = [item["values"] for item in body["embeddings"]]
    except (KeyError, TypeError) as err:
        raise bad_response("backend answer is not a Gemini batchEmbedContents response") from err
    return EmbedResult(vectors=number_rows(rows, expected), prompt_tokens=None)


class GeminiProvider(RemoteProvider):
    options: GeminiOptions

    def __init__(self, options: GeminiOptions, http: HttpClient) -> None:
        super().__init__(options, http, {"x-goog-api-key": options.secret()})
        self._api_base = options.api_base or DEFAULT_API_BASE

    def capabilities(self, model: str) -> Capabilities:
        inputs, tokens = self.options.batch_caps(MAX_INPUTS, None)
        modern = is_modern(model)
        return Capabilities(max_inputs=inputs, max_tokens=tokens, dimensions=ANY_DIMENSIONS if modern else None,
                            input_type=modern)

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        body = await self.post(endpoint(self._api_base, batch.model), to_payload(batch))
        result = from_payload(body, len(batch.inputs))
        return replace(result, vectors=normalize(result.vectors))
