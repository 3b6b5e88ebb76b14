"""A fake of Voyage AI's text embeddings endpoint, `POST /v1/embeddings`, as Voyage documents it.

It checks the Bearer key and every field: `input` (1 to 1,000 non-empty strings); `model`; `input_type`
(null, query or document); `truncation` (a boolean); `output_dtype` (float, the one the gateway reads);
`output_dimension` (256/512/1024/2048, on the models that take it only). A call over the model's total-token
cap is refused with Voyage's own 400 `{"detail"}` message, and so is a text over `context` words under
truncation false (cut under true). Words stand in for Voyage's tokens. As Voyage does, an `input_type`
prepends its documented prompt, so a query's row is the known vector of prompt + text, and the prompt counts
in `usage.total_tokens`. Rows are unit length at every size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.vendor import FakeVendor

MAX_INPUTS = 1000
PROMPTS = {"query": "Represent the query for retrieving supporting documents: ",
           "document": "Represent the document for retrieval: "}
OUTPUT_DIMENSIONS = frozenset({256, 512, 1024, 2048})
FLEXIBLE = frozenset({"voyage-3-large", "voyage-3.5", "voyage-3.5-lite", "voyage-code-3", "voyage-4-large",
                      "voyage-4", "voyage-4-lite"})
BATCH_TOKENS = {"voyage-4-lite": 1_000_000, "voyage-3.5-lite": 1_000_000, "voyage-4": 320_000,
                "voyage-3.5": 320_000, "voyage-2": 320_000}  # every other model: 120K
FIELDS = frozenset({"input", "model", "input_type", "truncation", "output_dimension", "output_dtype",
                    "encoding_format"})


@dataclass
class FakeVoyage(FakeVendor):
    api_key: str = "pa-voyage-secret-key-0123456789abcdef"
    context: int = 32_000  # words per text, standing in for the model's context length in tokens

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/v1/embeddings", self.embed)]

    def error_body(self, status: int, message: str) -> Any:
        return {"detail": message}

    def texts_of(self, call: Any) -> list[str]:
        return list(call["input"])

    def expected(self, text: str, input_type: str | None = None, dims: int | None = None) -> list[float]:
        """The row Voyage answers for `text`: the prompt of `input_type` comes first."""
        return self.vector(PROMPTS.get(input_type or "", "") + text, dims)

    async def embed(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.checked(request)
        if early is not None:
            return early
        problem = self.body_problem(body)
        if problem is not None:
            self.problem(problem)
            return self.error(400, problem)
        self.calls.append(body)
        model, prompt = body["model"], PROMPTS.get(body.get("input_type") or "", "")
        texts = [self.truncated(prompt + text, body.get("truncation", True)) for text in body["input"]]
        if any(text is None for text in texts):
            return self.error(400, f"Request to model '{model}' failed. An input text is longer than the context "
                                   f"length {self.context} and truncation is false.")
        tokens = sum(len(text.split()) for text in texts if text is not None)
        cap = BATCH_TOKENS.get(model, 120_000)
        if tokens > cap:
            self.problem(f"a call of {tokens} tokens to {model}, over its cap of {cap}")
            return self.error(400, f"Request to model '{model}' failed. The max allowed tokens per submitted batch "
                                   f"is {cap}. Your batch has {tokens} tokens after truncation. Please lower the "
                                   "number of tokens in the batch.")
        width = body.get("output_dimension") or self.dims
        rows = [self.vector(text, width) for text in texts if text is not None]
        return web.json_response({
            "object": "list", "model": model, "usage": {"total_tokens": tokens},
            "data": [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)],
        })

    def truncated(self, text: str, truncation: bool) -> str | None:
        words = text.split()
        if len(words) <= self.context:
            return text
        return " ".join(words[:self.context]) if truncation else None

    @staticmethod
    def body_problem(body: Any) -> str | None:
        """What Voyage would refuse in this body (or what the gateway must not send), or None."""
        problem = FakeVendor.text_list_problem(body, FIELDS, "input")
        if problem is not None:
            return problem
        model, texts = body["model"], body["input"]
        if len(texts) > MAX_INPUTS:
            return f"The maximum length of the input list is {MAX_INPUTS}; received {len(texts)}"
        if body.get("input_type") not in (None, "query", "document"):
            return f"input_type {body.get('input_type')!r} is not one of null, query, document"
        if not isinstance(body.get("truncation", True), bool):
            return f"truncation {body.get('truncation')!r} is not a boolean"
        if body.get("output_dtype", "float") != "float":
            return f"output_dtype {body.get('output_dtype')!r}: the gateway reads float rows only"
        dims = body.get("output_dimension")
        if dims is not None and (model not in FLEXIBLE or dims not in OUTPUT_DIMENSIONS):
            return f"output_dimension {dims!r} is not available for {model}"
        return None
