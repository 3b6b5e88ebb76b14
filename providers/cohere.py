"""Cohere's Embed API v2: `POST {api_base}/v2/embed`, `Authorization: Bearer`, texts only.

Request: `model`, `texts` (at most 96), `input_type` (required by v3 and later models), `embedding_types`,
`truncate`, and `output_dimension` on embed-v4 and later. Answer: `embeddings.float` in input order,
usage in `meta.billed_units.input_tokens`. Errors are `{"message": ...}`, which `providers.http` reads.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Literal

from providers.base import (
    DOCUMENT,
    QUERY,
    Capabilities,
    EmbedBatch,
    EmbedResult,
    bad_response,
    check_tokens,
    normalize,
    number_rows,
)
from providers.http import HttpClient
from providers.options import DeploymentOptions
from providers.remote import RemoteProvider

DEFAULT_API_BASE = "https://api.cohere.com"
MAX_INPUTS = 96  # texts per call
OUTPUT_DIMENSIONS = (256, 512, 1024, 1536)  # embed-v4 and later; 1536 is the native size
_INPUT_TYPES = {QUERY: "search_query", DOCUMENT: "search_document"}
DEFAULT_INPUT_TYPE = "search_document"  # v2 requires one; what a stored (indexed) text is
_VERSIONED = re.compile(r"^embed-v(\d+)")  # "embed-v4.0"; older names read "embed-english-v3.0"


class CohereOptions(DeploymentOptions):
    provider: Literal["cohere"] = "cohere"
    key_required = "Cohere authenticates every call with a Bearer key"
    # NONE: an input over the model's context is refused (400), as OpenAI does, rather than embedded
    # from a part of it without anyone knowing. START / END cut it as Cohere documents.
    truncate: Literal["NONE", "START", "END"] = "NONE"
    # Clients of an OpenAI-shaped API compare by dot product: rows are L2-normalised unless this is false.
    normalize: bool = True


def output_dimensions(model: str) -> tuple[int, ...] | None:
    """The sizes `output_dimension` takes for `model`: embed-v4 and later only."""
    match = _VERSIONED.match(model)
    return OUTPUT_DIMENSIONS if match and int(match.group(1)) >= 4 else None


def cohere_input_type(input_type: str | None) -> str:
    """query/document in Cohere's words; Cohere's own values (classification, clustering...) as they are."""
    if input_type is None:
        return DEFAULT_INPUT_TYPE
    return _INPUT_TYPES.get(input_type, input_type)


def embed_body(batch: EmbedBatch, truncate: str) -> dict[str, Any]:
    """The body's fields other than `model`: what Cohere's models take wherever they are served (Bedrock too)."""
    texts = [x for x in batch.inputs if isinstance(x, str)]
    if len(texts) != len(batch.inputs):  # capabilities say text only: the dispatcher decodes token ids
        raise TypeError("Cohere models take text inputs only")
    body: dict[str, Any] = {
        "texts": texts,
        "input_type": cohere_input_type(batch.input_type),
        "embedding_types": ["float"],
        "truncate": truncate,
    }
    if batch.dimensions is not None:
        body["output_dimension"] = batch.dimensions
    return body


def to_payload(batch: EmbedBatch, truncate: str) -> dict[str, Any]:
    return {"model": batch.model, **embed_body(batch, truncate)}


def billed_tokens(body: Any) -> int | None:
    """`meta.billed_units.input_tokens`; Cohere's SDK types it as a number, so 12.0 reads as 12."""
    meta = body.get("meta") if isinstance(body, dict) else None
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    value = billed.get("input_tokens") if isinstance(billed, dict) else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_tokens(value)


def from_payload(body: Any, expected: int) -> EmbedResult:
    try:
        rows = body["embeddings"]["float"]
    except (KeyError, TypeError) as err:
        raise bad_response("backend answer is not a Cohere embed response with float embeddings") from err
    return EmbedResult(vectors=number_rows(rows, expected), prompt_tokens=billed_tokens(body))


class CohereProvider(RemoteProvider):
    options: CohereOptions

    def __init__(self, options: CohereOptions, http: HttpClient) -> None:
        super().__init__(options, http, {"Authorization": f"Bearer {options.secret()}"})
        self._url = (options.api_base or DEFAULT_API_BASE).rstrip("/") + "/v2/embed"

    def capabilities(self, model: str) -> Capabilities:
        inputs, tokens = self.options.batch_caps(MAX_INPUTS, None)
        return Capabilities(max_inputs=inputs, max_tokens=tokens, dimensions=output_dimensions(model),
                            input_type=True)

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        body = await self.post(self._url, to_payload(batch, self.options.truncate))
        result = from_payload(body, len(batch.inputs))
        # embed-v3 rows are not promised unit length.
        return replace(result, vectors=normalize(result.vectors)) if self.options.normalize else result
