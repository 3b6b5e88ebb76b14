"""OpenAI's embeddings API, and every server that speaks it (presets: Mistral, Jina, Together, Fireworks,
DeepInfra, TEI, vLLM, Ollama, infinity; Azure reuses the translation). Its answer is read by
`providers/openai_answer.py`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from providers.base import ANY_DIMENSIONS, Capabilities, EmbedBatch, EmbedResult
from providers.http import HttpClient
from providers.openai_answer import AnswerReader
from providers.options import DeploymentOptions
from providers.presets import PRESETS
from providers.remote import RemoteProvider

DEFAULT_API_BASE = "https://api.openai.com/v1"
MAX_INPUTS = 2048
MAX_TOKENS = 300_000


class OpenAIOptions(DeploymentOptions):
    provider: Literal["openai"] = "openai"
    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    upstream_encoding: Literal["base64", "float"] = "base64"
    send_dimensions: bool = True  # the server takes OpenAI's `dimensions` parameter
    text_only: bool = False  # the server takes strings only: token ids are always decoded first
    # A server that reads query-vs-document from a body field of its own (Jina: `task`): that field, and
    # query/document in its words; any other value a client sends goes as it is.
    input_type_field: str | None = Field(None, min_length=1)
    input_types: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """The preset's values under the config's own: whatever the config sets wins."""
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return {**PRESETS[data["preset"]], **data}
        return data


def to_payload(batch: EmbedBatch, encoding_format: str, send_model: bool = True,
               input_type_field: str | None = None, input_types: Mapping[str, str] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "input": [x if isinstance(x, str) else list(x) for x in batch.inputs],
        "encoding_format": encoding_format,
    }
    if send_model:
        payload["model"] = batch.model
    if batch.dimensions is not None:
        payload["dimensions"] = batch.dimensions
    if input_type_field is not None and batch.input_type is not None:
        payload[input_type_field] = (input_types or {}).get(batch.input_type, batch.input_type)
    return payload


class OpenAIProvider(RemoteProvider):
    options: OpenAIOptions

    def __init__(self, options: OpenAIOptions, http: HttpClient) -> None:
        key = options.secret()
        super().__init__(options, http, {"Authorization": f"Bearer {key}"} if key else None)
        self._url = (options.api_base or DEFAULT_API_BASE).rstrip("/") + "/embeddings"

    def capabilities(self, model: str) -> Capabilities:
        inputs, tokens = self.options.batch_caps(MAX_INPUTS, MAX_TOKENS)
        return Capabilities(
            max_inputs=inputs, max_tokens=tokens,
            dimensions=ANY_DIMENSIONS if self.options.send_dimensions else None,
            input_type=self.options.input_type_field is not None,
            token_ids=not self.options.text_only and self.options.passes_token_ids(model),
        )

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        options = self.options
        payload = to_payload(batch, options.upstream_encoding, input_type_field=options.input_type_field,
                             input_types=options.input_types)
        reader = AnswerReader(len(batch.inputs))
        await self.post_into(self._url, payload, reader)
        return reader.result()
