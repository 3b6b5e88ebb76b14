"""The wire contract: pydantic models of the bodies embedgate parses and renders.

The handlers parse requests with these models (`parse_body`) and build their answers from them, and
`proxy/openapi.py` publishes their JSON schemas as `GET /openapi.json`: the document is the code's own
contract, not a copy of it. Every validation failure becomes one OpenAI-shaped 400 naming the field.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from proxy.auth import KeyRecord
from proxy.errors import InvalidRequest
from proxy.settings import Limits

MAX_INPUTS = 2048
MAX_USER_LENGTH = 512
MAX_INPUT_TYPE_LENGTH = 64

Body = TypeVar("Body", bound=BaseModel)


class Wire(BaseModel):
    """A body a client sends: unknown fields refused, types as JSON has them (no "5" for 5)."""

    model_config = ConfigDict(extra="forbid")


class Answer(BaseModel):
    """A body embedgate sends: every field is always there, defaults included."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


# An ISO 8601 time, UTC when it names no zone. (pydantic alone would also read "1" as epoch seconds.)
ISO_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$"


def _iso_time(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if not re.fullmatch(ISO_TIME, value):
        raise PydanticCustomError("datetime_format", "input should be an ISO 8601 time such as 2030-01-31T12:00:00Z")
    return datetime.fromisoformat(value)  # a ValueError (month 13) is a validation error


IsoTime = Annotated[datetime, BeforeValidator(_iso_time),
                    WithJsonSchema({"type": "string", "pattern": ISO_TIME,
                                    "description": "An ISO 8601 time; UTC when it names no zone."})]


# --- POST /v1/embeddings ------------------------------------------------------------------

Text = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _input_problem(raw: Any) -> PydanticCustomError:
    """Why `input` is not one of its shapes, in OpenAI's words and naming the item (`input[3]`)."""
    if isinstance(raw, str):
        return PydanticCustomError("invalid_value", "'{param}' must not be an empty string.", {"param": "input"})
    if not isinstance(raw, list):
        return PydanticCustomError(
            "invalid_type", "'{param}' must be a string, an array of strings, an array of token ids or an array "
            "of token-id arrays.", {"param": "input"})
    if not raw:
        return PydanticCustomError("invalid_value", "'{param}' must not be an empty array.", {"param": "input"})
    if len(raw) > MAX_INPUTS:
        return PydanticCustomError(
            "too_many_inputs", "'{param}' has {count} items; at most {limit} inputs are allowed per request.",
            {"param": "input", "count": len(raw), "limit": MAX_INPUTS})
    if all(_is_int(x) for x in raw):
        return _token_problem(raw, "input")
    for index, item in enumerate(raw):
        param = f"input[{index}]"
        if isinstance(item, str) and not item:
            return PydanticCustomError("invalid_value", "'{param}' must not be an empty string.", {"param": param})
        if isinstance(item, list):
            if not item:
                return PydanticCustomError(
                    "invalid_value", "'{param}' is an empty token array; an input must not be empty.",
                    {"param": param})
            if not all(_is_int(t) and t >= 0 for t in item):
                return _token_problem(item, param)
        elif not isinstance(item, str):
            return PydanticCustomError(
                "invalid_type", "'{param}' must be a string or an array of token ids.", {"param": param})
    return PydanticCustomError("invalid_value", "'{param}' is not a valid input.", {"param": "input"})


def _token_problem(tokens: list[Any], param: str) -> PydanticCustomError:
    for position, token in enumerate(tokens):
        if not _is_int(token):
            return PydanticCustomError("invalid_type", "'{param}[{position}]' must be an integer token id.",
                                       {"param": param, "position": position})
        if token < 0:
            return PydanticCustomError("invalid_value", "'{param}[{position}]' is a negative token id.",
                                       {"param": param, "position": position})
    return PydanticCustomError("invalid_value", "'{param}' is not a valid token array.", {"param": param})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _explained(raw: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(raw)  # the declared types do the work; on failure, say which item is wrong
    except ValidationError:
        raise _input_problem(raw) from None


EmbeddingInput = Annotated[
    Text | TokenIds | Annotated[list[Text | TokenIds], Field(min_length=1, max_length=MAX_INPUTS)],
    WrapValidator(_explained),
    Field(description="Text to embed, or cl100k token ids: a string, an array of token ids, or an array of up to "
                      f"{MAX_INPUTS} strings and token-id arrays. No input may be empty.",
          examples=["The quick brown fox jumped over the lazy dog", ["first document", "second document"]]),
]


class EmbeddingCreate(Wire):
    """The body of `POST /v1/embeddings`: OpenAI's fields, plus embedgate's `input_type`."""

    model: str = Field(min_length=1, description="A model name, alias or pattern match from the gateway's config.")
    input: EmbeddingInput
    dimensions: int | None = Field(None, ge=1, description="Output size, for models that support it.")
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="`float` arrays, or `base64` of little-endian float32.")
    user: str | None = Field(None, max_length=MAX_USER_LENGTH, description="The end user, for per-user limits.")
    input_type: str | None = Field(
        None, min_length=1, max_length=MAX_INPUT_TYPE_LENGTH,
        description="embedgate's extension: `query`, `document`, or a vendor's own value such as "
                    "`classification`. Refused (400 `unsupported_parameter`) by models with no such notion.")


class Embedding(Answer):
    object: Literal["embedding"] = "embedding"
    index: int = Field(ge=0)
    embedding: list[float] | str = Field(
        description="The vector: floats, or base64 of little-endian float32 for `encoding_format: base64`.")


class EmbeddingUsage(Answer):
    prompt_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class EmbeddingList(Answer):
    """The answer of `POST /v1/embeddings` (rendered by proxy/render.py straight from the float32 rows)."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str = Field(description="The model as the client named it.")
    usage: EmbeddingUsage


# --- models, health ------------------------------------------------------------------------

class ModelObject(Answer):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "embedgate"


class ModelList(Answer):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class Health(Answer):
    status: Literal["ok"] = "ok"


class Readiness(Answer):
    status: Literal["ready", "not ready", "draining"]
    checks: dict[str, bool] = Field(description="Each deployment, the store(s), and whether it accepts traffic.")


# --- the admin API ---------------------------------------------------------------------------

class KeyView(KeyRecord, Answer):
    """A key as the admin API shows it: never the secret, only its `redacted` form."""

    object: Literal["api_key"] = "api_key"
    expired: bool


class CreatedKey(KeyView):
    key: str = Field(description="The secret: shown only in this answer, never stored.")


class RevokedKey(KeyView):
    deleted: Literal[True] = True


class KeyList(Answer):
    object: Literal["list"] = "list"
    data: list[KeyView]


class TeamView(Answer):
    object: Literal["team"] = "team"
    team: str
    keys: int = Field(ge=0, description="How many keys the team has.")
    limits: Limits
    user_limits: Limits = Field(description="Default limits of each end user (`user` field) of the team.")


class UsageCounts(Answer):
    requests: int = 0
    tokens: int = 0
    cache_hits: int = 0


class UsageDay(UsageCounts):
    date: date


class UsageFilters(Answer):
    team: str | None = None
    key: str | None = None
    user: str | None = None
    model: str | None = None


class UsageReport(Answer):
    object: Literal["usage"] = "usage"
    start: date
    end: date
    filters: UsageFilters
    data: list[UsageDay] = Field(description="One entry per UTC day of the range, in order.")
    total: UsageCounts


# --- parsing -------------------------------------------------------------------------------

def parse_body(raw: bytes, model: type[Body]) -> Body:
    """A JSON body as `model`, strictly (JSON's own types); any problem is one OpenAI-shaped 400."""
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as err:
        raise _invalid_request(model, err) from None


def validate_fields(data: Any, model: type[Body]) -> Body:
    """`parse_body` for a body already decoded from JSON (so its types are JSON's)."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as err:
        raise _invalid_request(model, err) from None


_TYPE_ERRORS = frozenset({"string_type", "int_type", "bool_type", "list_type", "tuple_type", "dict_type",
                          "model_type", "model_attributes_type", "datetime_type", "float_type", "none_required"})


def _param(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The field an error is about, as a client names it (`limits.rpm`, `models[2]`): the parts of `loc`
    that are fields or indexes, without the union member tags pydantic puts between them (`expires_at.int`)."""
    text, current = "", model
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif current is not None and part in current.model_fields:
            text += f".{part}" if text else part
            current = _model_in(current.model_fields[part].annotation)
    return text


def _model_in(annotation: Any) -> Any:
    """The pydantic model a field holds (directly, in a union or a container), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def _rank(error: ErrorDetails) -> int:
    """OpenAI names an unknown field first, then a missing one; then the fields in order."""
    return {"extra_forbidden": 0, "missing": 1}.get(error["type"], 2)


def _invalid_request(model: type[BaseModel], err: ValidationError) -> InvalidRequest:
    errors = err.errors(include_url=False)
    error = min(errors, key=_rank)  # min is stable: the first of the best rank
    kind, context, loc = error["type"], error.get("ctx") or {}, error["loc"]
    if kind == "json_invalid":
        return InvalidRequest("We could not parse the JSON body of your request. Send a JSON object.",
                              code="invalid_json")
    if kind == "extra_forbidden":  # the unknown name itself is no field: keep it as sent
        param = ".".join(filter(None, (_param(model, loc[:-1]), str(loc[-1]))))
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param,
                              code="unknown_parameter")
    param = context.get("param") or _param(model, loc)
    if not param:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if "param" in context:  # one of ours (`_input_problem`): its type is the code, its message OpenAI's
        return InvalidRequest(error["msg"], param=param, code=kind)
    code = "invalid_type" if kind in _TYPE_ERRORS else "invalid_value"
    # A union reports one error per member it tried: say them all.
    said = dict.fromkeys(e["msg"] for e in errors if _param(model, e["loc"]) == param and _rank(e) == _rank(error))
    reasons = ", or ".join(m[:1].lower() + m[1:] for m in said)
    return InvalidRequest(f"Invalid '{param}': {reasons}.", param=param, code=code)


# --- Files and batches (OpenAI's shapes) ---------------------------------------------------


class FileObject(Answer):
    id: str
    object: Literal["file"] = "file"
    bytes: int = Field(ge=0)
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None


class FileList(Answer):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(Answer):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchRequestCounts(Answer):
    total: int = Field(ge=0)
    completed: int = Field(ge=0)
    failed: int = Field(ge=0)


class BatchObject(Answer):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None


class BatchList(Answer):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
