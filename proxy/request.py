"""Parse the body of `POST /v1/embeddings` exactly as OpenAI defines it.

Shape and type rules only; limits that depend on the model (tokens, dimensions)
live in `validation.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.errors import InvalidRequest

MAX_INPUTS = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_USER_LENGTH = 512
MAX_INPUT_TYPE_LENGTH = 64
# OpenAI's fields, plus embedgate's one extension: `input_type` ("query" | "document" | a vendor's own value).
KNOWN_FIELDS = frozenset({"input", "model", "dimensions", "encoding_format", "user", "input_type"})

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
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise _invalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")

    model = data.get("model")
    if model is None:
        raise _invalid("you must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' must be a non-empty string.", "model", "invalid_type")
    if "input" not in data:
        raise _invalid("'input' is a required property.", "input", "missing_required_parameter")
    inputs, single = _parse_input(data["input"])

    dimensions = data.get("dimensions")
    if dimensions is not None:
        if not _is_int(dimensions):
            raise _invalid("'dimensions' must be an integer.", "dimensions", "invalid_type")
        if dimensions < 1:
            raise _invalid(f"'dimensions' must be at least 1, got {dimensions}.", "dimensions")

    encoding_format: Literal["float", "base64"]
    match data.get("encoding_format"):
        case None | "float":
            encoding_format = "float"
        case "base64":
            encoding_format = "base64"
        case other:
            raise _invalid(f"'encoding_format' must be 'float' or 'base64', got {other!r}.", "encoding_format")

    user = data.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_LENGTH):
        raise _invalid(f"'user' must be a string of at most {MAX_USER_LENGTH} characters.", "user", "invalid_type")

    input_type = data.get("input_type")
    if input_type is not None and (not isinstance(input_type, str) or not 0 < len(input_type) <= MAX_INPUT_TYPE_LENGTH):
        raise _invalid(f"'input_type' must be a non-empty string of at most {MAX_INPUT_TYPE_LENGTH} characters, "
                       "such as 'query' or 'document'.", "input_type", "invalid_type")

    return EmbeddingRequest(
        model=model, inputs=inputs, single=single, dimensions=dimensions,
        encoding_format=encoding_format, user=user or None, input_type=input_type,
    )
