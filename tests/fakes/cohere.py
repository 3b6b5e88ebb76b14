"""A fake of Cohere's Embed API v2, `POST /v2/embed`, as Cohere documents it.

It checks the Bearer key and every field: `model`; `texts` (1 to 96 non-empty strings, more answered with
Cohere's 400 `{"message"}`); `input_type` (required; search_document, search_query, classification,
clustering, image); `embedding_types`; `truncate` (NONE, START, END); `output_dimension` (embed-v4 and
later only, 256/512/1024/1536). A text over `context` words is refused under truncate NONE and cut under
START/END. Rows are `scale` times the known unit vector of the (cut) text, since embed-v3 rows are not
unit length. `dims` is the native size: 1536 for an embed-v4 model, so every output_dimension can be cut.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.vendor import FakeVendor, cut_words

MAX_TEXTS = 96
INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering", "image"})
EMBEDDING_TYPES = frozenset({"float", "int8", "uint8", "binary", "ubinary", "base64"})
OUTPUT_DIMENSIONS = frozenset({256, 512, 1024, 1536})
FIELDS = frozenset({"model", "texts", "input_type", "embedding_types", "truncate", "output_dimension"})


def takes_output_dimension(model: str) -> bool:
    match = re.match(r"^embed-v(\d+)", model)
    return match is not None and int(match.group(1)) >= 4


def texts_problem(body: dict[str, Any], truncations: Collection[str], embedding_types: Any = None) -> str | None:
    """What a Cohere model refuses in `texts`, `input_type`, `embedding_types` (`embedding_types`: its default
    where it may be left out) and `truncate`, wherever it is served (Cohere's API, Bedrock)."""
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        return "texts must be a non-empty list of non-empty strings"
    if len(texts) > MAX_TEXTS:
        return f"total number of texts must be at most {MAX_TEXTS} - received {len(texts)}"
    if body.get("input_type") not in INPUT_TYPES:
        return f"input_type {body.get('input_type')!r} is not one of {sorted(INPUT_TYPES)}"
    types = body.get("embedding_types", embedding_types)
    if not isinstance(types, list) or "float" not in types or not set(types) <= EMBEDDING_TYPES:
        return f"embedding_types {types!r} must ask for float"
    if "truncate" in body and body["truncate"] not in truncations:
        return f"truncate {body['truncate']!r} is not one of {sorted(truncations)}"
    return None


@dataclass
class FakeCohere(FakeVendor):
    api_key: str = "cohere-secret-key-0123456789abcdef"
    scale: float = 3.0
    context: int = 512  # words per text, standing in for the model's token limit

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/v2/embed", self.embed)]

    def texts_of(self, call: Any) -> list[str]:
        return list(call["texts"])

    async def embed(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.checked(request)
        if early is not None:
            return early
        problem = self.body_problem(body)
        if problem is not None:
            self.problem(problem)
            return self.error(400, f"invalid request: {problem}")
        self.calls.append(body)
        texts = [cut_words(text, self.context, body.get("truncate", "END")) for text in body["texts"]]
        if any(text is None for text in texts):
            return self.error(400, f"invalid request: a text is longer than {self.context} tokens "
                                   "and truncate is NONE")
        width = body.get("output_dimension") or self.dims
        rows = [[v * self.scale for v in self.vector(text, width)] for text in texts if text is not None]
        tokens = sum(len(text.split()) for text in texts if text is not None)
        return web.json_response({
            "id": f"fake-{len(self.calls)}", "response_type": "embeddings_by_type",
            "embeddings": {"float": rows}, "texts": body["texts"],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
        })

    @staticmethod
    def body_problem(body: Any) -> str | None:
        """What Cohere would refuse in this body, or None."""
        problem = FakeVendor.text_list_problem(body, FIELDS, "texts") or \
            texts_problem(body, ("NONE", "START", "END"), embedding_types=None)
        if problem is not None:
            return problem
        model = body["model"]
        dims = body.get("output_dimension")
        if dims is not None and (not takes_output_dimension(model) or dims not in OUTPUT_DIMENSIONS):
            return f"output_dimension {dims!r} is not available for {model}"
        return None
