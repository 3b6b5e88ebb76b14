"""Voyage AI's text embeddings: `POST {api_base}/v1/embeddings`, `Authorization: Bearer`, texts only.

As documented at https://docs.voyageai.com/reference/embeddings-api. Request: `input` (at most 1,000 texts,
and at most a per-model total of tokens), `model`, `input_type` (null, query or document), `truncation`,
`output_dimension` (256/512/1024/2048 on the voyage-3-large, voyage-3.5, voyage-code-3 and voyage-4
families), `output_dtype`. Answer: OpenAI's shape, `data[].embedding` with `index`, and
`usage.total_tokens`. Errors are `{"detail": ...}`, which `providers.http` reads.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from providers.base import (
    DOCUMENT,
    QUERY,
    Capabilities,
    EmbedBatch,
    EmbedResult,
    ErrorKind,
    ProviderError,
    check_tokens,
)
from providers.http import HttpClient
from providers.openai_answer import from_payload as openai_from_payload
from providers.options import DeploymentOptions
from providers.remote import RemoteProvider

DEFAULT_API_BASE = "https://api.voyageai.com"
MAX_INPUTS = 1000  # texts per call
OUTPUT_DIMENSIONS = (256, 512, 1024, 2048)
_FLEXIBLE = frozenset({"voyage-3-large", "voyage-3.5", "voyage-3.5-lite", "voyage-code-3",
                       "voyage-4-large", "voyage-4", "voyage-4-lite"})  # the models that take output_dimension
# Tokens per call, summed over the inputs, as Voyage documents them per model.
_CALL_TOKENS = {"voyage-4-lite": 1_000_000, "voyage-3.5-lite": 1_000_000,
                "voyage-4": 320_000, "voyage-3.5": 320_000, "voyage-2": 320_000,
                "voyage-4-large": 120_000, "voyage-3-large": 120_000, "voyage-code-3": 120_000,
                "voyage-finance-2": 120_000, "voyage-law-2": 120_000}
DEFAULT_CALL_TOKENS = 120_000  # a model not listed gets the smallest documented cap
# The gateway counts tokens with cl100k, an approximation of Voyage's own tokenizers (which differ by model
# and run denser on some text), and Voyage also counts the prompt it prepends for input_type. Calls are
# therefore split at this share of the documented cap, so a batch is never refused for a few tokens.
TOKEN_MARGIN = 0.75


class VoyageOptions(DeploymentOptions):
    provider: Literal["voyage"] = "voyage"
    key_required = "Voyage authenticates every call with a Bearer key"
    # False: an input over the model's context is refused (400), as OpenAI does, rather than embedded from a
    # part of it without anyone knowing. True lets Voyage cut it to the context length.
    truncation: bool = False


def output_dimensions(model: str) -> tuple[int, ...] | None:
    """The sizes `output_dimension` takes for `model`, or None where it takes none."""
    return OUTPUT_DIMENSIONS if model in _FLEXIBLE else None


def call_tokens(model: str) -> int:
    """The tokens one call may carry for `model`, counted with cl100k: the documented cap, less the margin."""
    return int(_CALL_TOKENS.get(model, DEFAULT_CALL_TOKENS) * TOKEN_MARGIN)


def voyage_input_type(input_type: str | None) -> str | None:
    """query/document are Voyage's own words; None is its default (no prompt prepended). It has no others."""
    if input_type not in (None, QUERY, DOCUMENT):
        raise ProviderError(ErrorKind.BAD_REQUEST,
                            f"Voyage takes input_type 'query' or 'document', not {input_type!r:.40}")
    return input_type


def to_payload(batch: EmbedBatch, truncation: bool) -> dict[str, Any]:
    texts = [x for x in batch.inputs if isinstance(x, str)]
    if len(texts) != len(batch.inputs):  # capabilities say text only: the dispatcher decodes token ids
        raise TypeError("the Voyage provider takes text inputs only")
    payload: dict[str, Any] = {
        "input": texts,
        "model": batch.model,
        "input_type": voyage_input_type(batch.input_type),
        "truncation": truncation,
        "output_dtype": "float",
    }
    if batch.dimensions is not None:
        payload["output_dimension"] = batch.dimensions
    return payload


def from_payload(body: Any, expected: int) -> EmbedResult:
    """OpenAI's answer shape (rows by `index`), with the usage in `total_tokens`."""
    result = openai_from_payload(body, expected)
    usage = body.get("usage")
    return replace(result, prompt_tokens=check_tokens(usage.get("total_tokens") if isinstance(usage, dict) else None))


class VoyageProvider(RemoteProvider):
    options: VoyageOptions

    def __init__(self, options: VoyageOptions, http: HttpClient) -> None:
        super().__init__(options, http, {"Authorization": f"Bearer {options.secret()}"})
        self._url = (options.api_base or DEFAULT_API_BASE).rstrip("/") + "/v1/embeddings"

    def capabilities(self, model: str) -> Capabilities:
        inputs, tokens = self.options.batch_caps(MAX_INPUTS, call_tokens(model))
        return Capabilities(max_inputs=inputs, max_tokens=tokens, dimensions=output_dimensions(model),
                            input_type=True)

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        # Voyage's rows are unit length at every output_dimension: they go as they are.
        body = await self.post(self._url, to_payload(batch, self.options.truncation))
        return from_payload(body, len(batch.inputs))
