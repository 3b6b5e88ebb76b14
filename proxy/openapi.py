"""`GET /openapi.json`: an OpenAPI 3.1 document of everything embedgate serves.

Built from the pydantic models the handlers parse and render (proxy/schema.py, the admin bodies of
proxy/accounts.py, the error shape of proxy/errors.py) and from the statuses of the error family, so it
says what the code does. tests/proxy/test_openapi.py checks it against the app's routes and the
OpenAPI 3.1 spec; tests/test_contract.py fuzzes a live gateway with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, get_args

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from proxy.accounts import KeyCreate, KeyPatch, TeamConfig
from proxy.batches import BatchCreate
from proxy.cache import Status as CacheStatus
from proxy.embeddings import CACHE_HEADER, DEPLOYMENT_HEADER
from proxy.errors import (
    AuthenticationFailed,
    ErrorResponse,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.quota import UNLIMITED
from proxy.schema import (
    BatchList,
    BatchObject,
    CreatedKey,
    EmbeddingCreate,
    EmbeddingList,
    FileDeleted,
    FileList,
    FileObject,
    Health,
    KeyList,
    KeyView,
    ModelList,
    ModelObject,
    Readiness,
    RevokedKey,
    TeamView,
    UsageReport,
)
from proxy.settings import TEAM_PATTERN

JSON = "application/json"
Auth = Literal["client", "admin"] | None

# What each error status means, for the document; the statuses themselves come from the error classes.
_ERROR_TEXT = {
    InvalidRequest.status: "Invalid request: `param` names the field, `code` the problem (e.g. `invalid_value`, "
                           "`unknown_parameter`, `context_length_exceeded`, `invalid_json`).",
    AuthenticationFailed.status: "Missing, unknown, revoked or expired API key (`invalid_api_key`).",
    PermissionDenied.status: "A model outside the key's allow-list (`model_not_allowed`); on the admin API, "
                             "no master key configured (`admin_disabled`).",
    NotFound.status: "Unknown model (`model_not_found`), key (`key_not_found`), team (`team_not_found`) or URL.",
    PayloadTooLarge.status: "The body is over `server.max_body_bytes` (`request_too_large`).",
    UnsupportedMediaType.status: "The body is not `application/json` (`unsupported_media_type`).",
    RateLimited.status: "A key, team or user limit: `rate_limit_exceeded` (per minute) or `insufficient_quota` "
                        "(per day or month). `Retry-After` says when to retry.",
    UpstreamError.status: "The backend failed, refused our credentials or answered nonsense, after retries and "
                          "failover (`upstream_unavailable`, `upstream_auth_failed`, `upstream_bad_response`).",
    ServiceUnavailable.status: "The backend rate-limited us or is unavailable, the model is still loading, the "
                               "gateway is overloaded, or the store is unavailable.",
    UpstreamTimeout.status: "The backend timed out, or `dispatch.deadline` passed (`upstream_timeout`).",
}

_CLIENT_ERRORS = (AuthenticationFailed, ServiceUnavailable)
_EMBEDDING_ERRORS = (InvalidRequest, AuthenticationFailed, PermissionDenied, NotFound, PayloadTooLarge,
                     UnsupportedMediaType, RateLimited, UpstreamError, ServiceUnavailable, UpstreamTimeout)
_ADMIN_ERRORS = (AuthenticationFailed, PermissionDenied, ServiceUnavailable)
_ADMIN_BODY_ERRORS = (*_ADMIN_ERRORS, InvalidRequest, PayloadTooLarge, UnsupportedMediaType)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    answer: type[BaseModel] | None  # None: not JSON (its `content` is given instead)
    errors: tuple[type[GatewayError], ...] = ()
    body: type[BaseModel] | None = None
    status: int = 200
    parameters: tuple[dict[str, Any], ...] = ()
    auth: Auth = None
    content: dict[str, Any] | None = None
    model_examples: bool = False  # its path parameter takes a model name: the gateway's names are examples
    links: tuple[tuple[str, str, str], ...] = ()  # (operationId, its parameter, a field of this answer)
    upload: bool = False  # a multipart/form-data body (`file`, `purpose`) instead of JSON


def _param(name: str, where: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": description,
            "schema": {"type": "string", **({"minLength": 1} if where == "path" else {}), **schema}}


_CACHE_CONTROL = _param("Cache-Control", "header", "`no-cache` skips the cache read, `no-store` the cache write.")
_KEY_ID = _param("key_id", "path", "The key's id (`key_...`).")
_TEAM = _param("team", "path", "A team name.", pattern=TEAM_PATTERN)
_USAGE_QUERY = (
    _param("team", "query", "Only this team."), _param("key", "query", "Only this key id."),
    _param("user", "query", "Only this end user."), _param("model", "query", "Only this model (config name)."),
    _param("start", "query", "First UTC day (inclusive); default: 29 days before `end`.", format="date"),
    _param("end", "query", "Last UTC day (inclusive); default: today, on the store's clock.", format="date"),
)

_KEY_LINKS = (("getKey", "key_id", "id"), ("updateKey", "key_id", "id"), ("revokeKey", "key_id", "id"))


def _embeddings(path: str, operation_id: str) -> Operation:
    return Operation("post", path, operation_id, "Create embeddings (OpenAI's API; plus `input_type`).",
                     "Embeddings", EmbeddingList, _EMBEDDING_ERRORS, body=EmbeddingCreate,
                     parameters=(_CACHE_CONTROL,), auth="client")


_CORE: tuple[Operation, ...] = (
    _embeddings("/v1/embeddings", "createEmbedding"),
    _embeddings("/embeddings", "createEmbeddingUnversioned"),
    Operation("get", "/v1/models", "listModels", "The model names this key may use.", "Models", ModelList,
              _CLIENT_ERRORS, auth="client"),
    Operation("get", "/v1/models/{model_id}", "retrieveModel", "One model name, if this key may use it.", "Models",
              ModelObject, (*_CLIENT_ERRORS, PermissionDenied, NotFound),
              parameters=(_param("model_id", "path", "A model name or alias."),), auth="client", model_examples=True),
    Operation("get", "/healthz", "health", "Alive.", "Operations", Health),
    Operation("get", "/readyz", "readiness", "200 once every backend has started and the store answers; 503 "
              "before, and while draining.", "Operations", Readiness),
    Operation("get", "/metrics", "metrics", "Prometheus metrics.", "Operations", None,
              content={"text/plain": {"schema": {"type": "string"}}}),
    Operation("get", "/openapi.json", "openapi", "This document.", "Operations", None,
              content={JSON: {"schema": {"type": "object"}}}),
    Operation("post", "/admin/keys", "createKey", "Make a team's key; the secret is in this answer only.", "Admin",
              CreatedKey, _ADMIN_BODY_ERRORS, body=KeyCreate, status=201, auth="admin",
              links=(*_KEY_LINKS, ("listKeys", "team", "team"), ("getTeam", "team", "team"),
                     ("getUsage", "key", "id"))),
    Operation("get", "/admin/keys", "listKeys", "Every key, or a team's, without secrets.", "Admin", KeyList,
              _ADMIN_ERRORS, parameters=(_param("team", "query", "Only this team's keys."),), auth="admin"),
    Operation("get", "/admin/keys/{key_id}", "getKey", "One key.", "Admin", KeyView, (*_ADMIN_ERRORS, NotFound),
              parameters=(_KEY_ID,), auth="admin"),
    Operation("patch", "/admin/keys/{key_id}", "updateKey", "Change a key; fields left out stay as they are.",
              "Admin", KeyView, (*_ADMIN_BODY_ERRORS, NotFound), body=KeyPatch, parameters=(_KEY_ID,), auth="admin",
              links=_KEY_LINKS),
    Operation("delete", "/admin/keys/{key_id}", "revokeKey", "Revoke a key, at once on every replica.", "Admin",
              RevokedKey, (*_ADMIN_ERRORS, NotFound), parameters=(_KEY_ID,), auth="admin"),
    Operation("put", "/admin/teams/{team}", "setTeam", "Replace a team's limits and per-user limits.", "Admin",
              TeamView, (*_ADMIN_BODY_ERRORS, NotFound), body=TeamConfig, parameters=(_TEAM,), auth="admin",
              links=(("getTeam", "team", "team"), ("getUsage", "team", "team"))),
    Operation("get", "/admin/teams/{team}", "getTeam", "A team's limits and number of keys.", "Admin", TeamView,
              (*_ADMIN_ERRORS, NotFound), parameters=(_TEAM,), auth="admin"),
    Operation("get", "/admin/usage", "getUsage", "Requests, tokens and cache hits per UTC day.", "Admin",
              UsageReport, (*_ADMIN_ERRORS, InvalidRequest), parameters=_USAGE_QUERY, auth="admin"),
)

_FILE_ID = _param("file_id", "path", "A file's id (`file-...`).")
_BATCH_ID = _param("batch_id", "path", "A batch's id (`batch_...`).")
_PAGE = (_param("after", "query", "The last id of the previous page."),
         _param("limit", "query", "Page size.", pattern="^[0-9]+$"))
_FILE_ERRORS = (*_CLIENT_ERRORS, NotFound)
_UPLOAD = {"type": "object", "required": ["file", "purpose"],
           # `file` is bytes of any kind (no JSON type: in a multipart body every part is bytes).
           "properties": {"file": {"contentMediaType": "application/octet-stream",
                                   "description": "JSONL, one request line per line."},
                          "purpose": {"type": "string", "enum": ["batch"]}}}

# OpenAI's Files and Batch API (proxy/batch_handlers.py).
OPERATIONS: tuple[Operation, ...] = (
    *_CORE,
    Operation("post", "/v1/files", "createFile", "Upload a JSONL file for the Batch API.", "Batch", FileObject,
              (*_CLIENT_ERRORS, InvalidRequest, PayloadTooLarge, UnsupportedMediaType), auth="client", upload=True),
    Operation("get", "/v1/files", "listFiles", "This team's files, newest first.", "Batch", FileList,
              (*_CLIENT_ERRORS, InvalidRequest), auth="client",
              parameters=(*_PAGE, _param("order", "query", "`asc` or `desc`.", enum=["asc", "desc"]),
                          _param("purpose", "query", "Only files of this purpose."))),
    Operation("get", "/v1/files/{file_id}", "retrieveFile", "One file.", "Batch", FileObject, _FILE_ERRORS,
              parameters=(_FILE_ID,), auth="client"),
    Operation("delete", "/v1/files/{file_id}", "deleteFile", "Delete a file.", "Batch", FileDeleted, _FILE_ERRORS,
              parameters=(_FILE_ID,), auth="client"),
    Operation("get", "/v1/files/{file_id}/content", "retrieveFileContent", "A file's bytes.", "Batch", None,
              _FILE_ERRORS, parameters=(_FILE_ID,), auth="client",
              content={"application/octet-stream": {"schema": {"type": "string"}}}),
    Operation("post", "/v1/batches", "createBatch", "Run a file of /v1/embeddings requests.", "Batch", BatchObject,
              (*_FILE_ERRORS, InvalidRequest, PayloadTooLarge, UnsupportedMediaType), body=BatchCreate, auth="client"),
    Operation("get", "/v1/batches", "listBatches", "This team's batches, newest first.", "Batch", BatchList,
              (*_CLIENT_ERRORS, InvalidRequest), parameters=_PAGE, auth="client"),
    Operation("get", "/v1/batches/{batch_id}", "retrieveBatch", "One batch.", "Batch", BatchObject, _FILE_ERRORS,
              parameters=(_BATCH_ID,), auth="client"),
    Operation("post", "/v1/batches/{batch_id}/cancel", "cancelBatch", "Cancel a batch; what finished is kept.",
              "Batch", BatchObject, _FILE_ERRORS, parameters=(_BATCH_ID,), auth="client"),
)

_SCHEMA_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    *((m, "validation") for m in (EmbeddingCreate, KeyCreate, KeyPatch, TeamConfig, BatchCreate)),
    *((m, "serialization") for m in (EmbeddingList, ModelList, ModelObject, Health, Readiness, KeyView, CreatedKey,
                                     RevokedKey, KeyList, TeamView, UsageReport, ErrorResponse, FileObject,
                                     FileList, FileDeleted, BatchObject, BatchList)),
)


def _header(description: str, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


def _rate_limit_headers(required: bool) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for name in ("requests", "tokens"):
        headers |= {
            f"x-ratelimit-limit-{name}": _header(f"The most restrictive {name} limit ({UNLIMITED} where none "
                                                 "applies).", required, type="integer", minimum=0),
            f"x-ratelimit-remaining-{name}": _header(f"What is left of it ({UNLIMITED} where no limit applies).",
                                                     required, type="integer", minimum=0),
            f"x-ratelimit-reset-{name}": _header("When it next grows, as `20ms`, `1s`, `6m0s` (`0s` where no "
                                                 "limit applies).", required, type="string"),
        }
    return headers


def _error_responses(op: Operation, rate_limited: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in sorted({error.status for error in op.errors}):
        headers = _rate_limit_headers(required=False) if rate_limited else {}
        if status == RateLimited.status:
            headers["Retry-After"] = _header("Seconds to wait.", required=True, type="integer", minimum=1)
        elif status == ServiceUnavailable.status:
            headers["Retry-After"] = _header("Seconds to wait, when known.", type="integer", minimum=1)
        responses[str(status)] = {"description": _ERROR_TEXT[status], "headers": headers,
                                  "content": {JSON: {"schema": _ref(ErrorResponse)}}}
    return responses


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(op: Operation, auth_enabled: bool, models: Sequence[str]) -> dict[str, Any]:
    rate_limited = op.body is EmbeddingCreate and auth_enabled
    content = op.content if op.answer is None else {JSON: {"schema": _ref(op.answer)}}
    ok: dict[str, Any] = {"description": "OK", "content": content}
    if op.body is EmbeddingCreate:
        ok["headers"] = {
            DEPLOYMENT_HEADER: _header("The deployment(s) that served it, comma-separated; `cache` when every input "
                                       "was a cache hit.", required=True, type="string"),
            CACHE_HEADER: _header("How the cache served it.", required=True, type="string",
                                  enum=list(get_args(CacheStatus))),
            **(_rate_limit_headers(required=True) if rate_limited else {}),
        }
    if op.links:
        ok["links"] = {target: {"operationId": target, "parameters": {param: f"$response.body#/{field}"}}
                       for target, param, field in op.links}
    if op.path == "/readyz":
        ok = {**ok, "description": "Ready"}
    operation: dict[str, Any] = {
        "operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
        "parameters": [_with_examples(p, models) if op.model_examples else p for p in op.parameters],
        "responses": {str(op.status): ok, **_error_responses(op, rate_limited)},
    }
    if op.path == "/readyz":
        operation["responses"]["503"] = {"description": "Not ready, or draining", "content": ok["content"]}
    if op.upload:
        operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": _UPLOAD}}}
    if op.body is not None:
        operation["requestBody"] = {"required": op.body is EmbeddingCreate,
                                    "content": {JSON: {"schema": _ref(op.body), **_examples(op.body, models)}}}
    if op.auth == "admin":
        operation["security"] = [{"masterKey": []}]
    elif op.auth == "client" and auth_enabled:
        operation["security"] = [{"apiKey": []}]
    return operation


def _with_examples(parameter: dict[str, Any], models: Sequence[str]) -> dict[str, Any]:
    return {**parameter, "schema": {**parameter["schema"], "examples": list(models)}} if models else parameter


def _examples(body: type[BaseModel], models: Sequence[str]) -> dict[str, Any]:
    if body is not EmbeddingCreate or not models:
        return {}
    return {"examples": {
        "text": {"value": {"model": models[0], "input": "The quick brown fox jumped over the lazy dog"}},
        "batch": {"value": {"model": models[-1], "input": ["first document", "second document"],
                            "encoding_format": "base64"}},
        "token_ids": {"value": {"model": models[0], "input": [[9906, 1917], [15339]], "encoding_format": "float"}},
    }}


def _version() -> str:
    try:
        return version("embedgate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0"


def build_document(models: Sequence[str], auth_enabled: bool) -> dict[str, Any]:
    """The document for a gateway serving `models` (names and aliases), with or without authentication."""
    _, schemas = models_json_schema(_SCHEMA_MODELS, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, auth_enabled, models)
    return {
        "openapi": "3.1.0",
        "info": {"title": "embedgate", "version": _version(),
                 "description": "An OpenAI-compatible embeddings gateway. Every error has OpenAI's shape, "
                                "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`."},
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "A team key made by the admin API, a key from the config, or the master "
                                          "key."},
                "masterKey": {"type": "http", "scheme": "bearer", "description": "`auth.master_key`."},
            },
        },
    }
