"""Parse the body of `POST /v1/embeddings` exactly as OpenAI defines it.

The body's fields are `proxy.schema.EmbeddingCreate` (what `GET /openapi.json` publishes). `input` is
checked by the hand-written parser below rather than by the model's validators: a 16 MB body of token
ids must be refused as soon as its summed length crosses the cap, without a per-id pass first
(issue 11, item 5). tests/proxy/test_openapi.py holds the two to the same rules. Limits that depend on
the model (tokens, dimensions) live in `validation.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.errors import InvalidRequest
from proxy.schema import MAX_INPUTS, EmbeddingCreate, validate_fields

MAX_TOKENS_PER_REQUEST = 300_000
PLACEHOLDER = "x"  # stands in for `input` while the model checks the other fields

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def too_many_tokens(total: int) -> InvalidRequest:
    return _invalid(f"Requested {total} tokens, max {MAX_TOKENS_PER_REQUEST} tokens per request.",
                    "input", "max_tokens_per_request")


def _token_list(value: list[Any], param: str) -> tuple[int, ...]:
    # Whole-list checks run in C (type set, min); the per-position scan runs only to name a bad id.
    if not value:
        raise _invalid(f"'{param}' is an empty token array; an input must not be empty.", param)
    if set(map(type, value)) != {int}:  # bool, float, str, null, a nested array: not a token id
        position = next(i for i, token in enumerate(value) if not _is_int(token))
        raise _invalid(f"'{param}[{position}]' must be an integer token id.", param, "invalid_type")
    if min(value) < 0:
        position = next(i for i, token in enumerate(value) if token < 0)
        raise _invalid(f"'{param}[{position}]' is a negative token id.", param)
    return tuple(value)


def _parse_input(raw: Any) -> tuple[tuple[Input, ...], bool]:
    if isinstance(raw, str):
        if not raw:
            raise _invalid("'input' must not be an empty string.", "input")
        return (raw,), True
    if not isinstance(raw, list):
        raise _invalid(
            "'input' must be a string, an array of strings, an array of token ids or an array of token-id arrays.",
            "input", "invalid_type",
        )
    if not raw:
        raise _invalid("'input' must not be an empty array.", "input")
    if _is_int(raw[0]):  # one token array is one input, however many ids it holds (as at OpenAI)
        if len(raw) > MAX_TOKENS_PER_REQUEST:
            raise too_many_tokens(len(raw))
        return (_token_list(raw, "input"),), True
    if len(raw) > MAX_INPUTS:
        raise _invalid(f"'input' has {len(raw)} items; at most {MAX_INPUTS} inputs are allowed per request.",
                       "input", "too_many_inputs")
    if all(type(item) is str and item for item in raw):  # the usual array: one pass, no per-item name made
        return tuple(raw), False
    # Token ids are their own count: a body over the cap is refused before any id in it is looked at.
    ids = sum(len(item) for item in raw if isinstance(item, list))
    if ids > MAX_TOKENS_PER_REQUEST:
        raise too_many_tokens(ids)
    inputs: list[Input] = []
    for index, item in enumerate(raw):
        param = f"input[{index}]"
        if isinstance(item, str):
            if not item:
                raise _invalid(f"'{param}' must not be an empty string.", param)
            inputs.append(item)
        elif isinstance(item, list):
            inputs.append(_token_list(item, param))
        else:
            raise _invalid(f"'{param}' must be a string or an array of token ids.", param, "invalid_type")
    return tuple(inputs), False


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a JSON object.", code="invalid_json"
        ) from None
    # Every field but `input` through the published model (unknown fields, model, dimensions, ...).
    fields = {**data, "input": PLACEHOLDER} if isinstance(data, dict) and "input" in data else data
    params = validate_fields(fields, EmbeddingCreate)
    inputs, single = _parse_input(data["input"])
    return EmbeddingRequest(
        model=params.model, inputs=inputs, single=single, dimensions=params.dimensions,
        encoding_format=params.encoding_format or "float", user=params.user or None, input_type=params.input_type,
    )
