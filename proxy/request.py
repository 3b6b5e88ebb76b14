"""Parse the body of `POST /v1/embeddings` exactly as OpenAI defines it.

The body's shape and types are `proxy.schema.EmbeddingCreate` (what `GET /openapi.json` publishes);
limits that depend on the model (tokens, dimensions) live in `validation.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.schema import EmbeddingCreate, parse_body

Input = str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[Input, ...]
    single: bool  # `input` was one string or one token list, so errors name `input`, not `input[0]`
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    input_type: str | None = None

    def param(self, index: int) -> str:
        return "input" if self.single else f"input[{index}]"

    @property
    def texts(self) -> list[tuple[int, str]]:
        return [(i, x) for i, x in enumerate(self.inputs) if isinstance(x, str)]


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    params = parse_body(body, EmbeddingCreate)
    raw = params.input
    items: list[str | list[int]]
    if isinstance(raw, str) or isinstance(raw[0], int):  # one input, so errors name `input`
        items, single = [raw], True
    else:
        items, single = raw, False
    return EmbeddingRequest(
        model=params.model, inputs=tuple(x if isinstance(x, str) else tuple(x) for x in items), single=single,
        dimensions=params.dimensions, encoding_format=params.encoding_format or "float",
        user=params.user or None, input_type=params.input_type,
    )
