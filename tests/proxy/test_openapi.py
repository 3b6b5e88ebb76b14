"""GET /openapi.json: a valid OpenAPI 3.1 document, of every route, built from the models the handlers use."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema
import numpy as np
import orjson
import pytest
from openapi_spec_validator import validate

from proxy.accounts import KeyCreate, KeyPatch, TeamConfig
from proxy.app import create_app
from proxy.errors import GatewayError, InvalidRequest, error_body
from proxy.openapi import OPERATIONS, build_document
from proxy.render import embeddings_body
from proxy.request import parse_embedding_request
from proxy.schema import EmbeddingCreate, EmbeddingList, parse_body
from proxy.settings import parse_settings
from testkit.openai_upstream import FakeOpenAI
from tests.conftest import running_gateway, upstream_config
from tests.support.admin import MASTER_KEY

REF = "#/components/schemas/{model}"
DOCUMENT = build_document(["text-embedding-3-small", "small"], auth_enabled=True)


@pytest.mark.parametrize("auth_enabled", [True, False])
def test_the_document_is_valid_openapi_3_1(auth_enabled: bool) -> None:
    document = build_document(["m"], auth_enabled)
    validate(document)  # openapi-spec-validator: raises on any departure from the 3.1 spec
    assert document["openapi"].startswith("3.1")
    secured = "security" in document["paths"]["/v1/embeddings"]["post"]
    assert secured == auth_enabled
    assert document["paths"]["/admin/keys"]["post"]["security"] == [{"masterKey": []}]


def test_a_gateway_serves_its_document(fake_openai: FakeOpenAI) -> None:
    with running_gateway(upstream_config(fake_openai, auth={"master_key": MASTER_KEY})) as gateway:
        resp = httpx.get(gateway.url + "/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    served = resp.json()
    validate(served)
    assert served == orjson.loads(orjson.dumps(build_document(["text-embedding-3-small", "small", "ada"], True)))


def test_every_route_is_documented_and_every_operation_served() -> None:
    app = create_app(parse_settings({"models": [{"name": "m", "provider": "openai", "api_key": "k"}]}))
    routes = {(r.method.lower(), re.sub(r"\{(\w+):[^}]+\}", r"{\1}", r.resource.canonical))
              for r in app.router.routes() if r.method != "HEAD" and r.resource is not None}
    assert routes == {(op.method, op.path) for op in OPERATIONS}


@pytest.mark.parametrize(("model", "name"), [(EmbeddingCreate, "EmbeddingCreate"), (KeyCreate, "KeyCreate"),
                                             (KeyPatch, "KeyPatch"), (TeamConfig, "TeamConfig")])
def test_request_schemas_are_the_handlers_models(model: type, name: str) -> None:
    published = DOCUMENT["components"]["schemas"][name]
    own = model.model_json_schema(ref_template=REF)  # type: ignore[attr-defined]
    own.pop("$defs", None)
    assert published == own
    body = DOCUMENT["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/EmbeddingCreate"}


# Bodies on both sides of the published schema's edges: the handler must agree with the document on each.
EMBEDDING_BODIES: list[Any] = [
    {"model": "m", "input": "x"},
    {"model": "m", "input": ["a", [1, 2]], "dimensions": 8, "user": "u", "input_type": "query"},
    {"model": "m", "input": [1, 2, 3], "encoding_format": "base64"},
    {"model": "m", "input": "x", "encoding_format": None, "dimensions": None, "user": None, "input_type": None},
    {"model": "m", "input": ["x"] * 2048},
    {"model": "m", "input": ["x"] * 2049},
    {"model": "m", "input": ""}, {"model": "m", "input": []}, {"model": "m", "input": [[]]},
    {"model": "m", "input": [""]}, {"model": "m", "input": [True]}, {"model": "m", "input": [[1, True]]},
    {"model": "m", "input": [-1]}, {"model": "m", "input": [[0, -1]]}, {"model": "m", "input": [1.5]},
    {"model": "m", "input": {"text": "x"}}, {"model": "m", "input": None}, {"model": "m"}, {"input": "x"},
    {"model": "", "input": "x"}, {"model": 5, "input": "x"}, {"model": "m", "input": "x", "dimensions": 0},
    {"model": "m", "input": "x", "dimensions": True},
    {"model": "m", "input": "x", "encoding_format": "int8"}, {"model": "m", "input": "x", "user": "u" * 512},
    {"model": "m", "input": "x", "user": "u" * 513}, {"model": "m", "input": "x", "input_type": ""},
    {"model": "m", "input": "x", "input_type": "q" * 65}, {"model": "m", "input": "x", "colour": "red"},
    [1, 2], "text", None,
]


@pytest.mark.parametrize("body", EMBEDDING_BODIES, ids=lambda b: orjson.dumps(b).decode()[:60])
def test_the_handler_accepts_exactly_what_the_document_allows(body: Any) -> None:
    schema = {**DOCUMENT["components"]["schemas"]["EmbeddingCreate"], "components": DOCUMENT["components"]}
    allowed = jsonschema.Draft202012Validator(schema).is_valid(body)
    try:
        parse_embedding_request(orjson.dumps(body))
        accepted = True
    except InvalidRequest as err:
        accepted = False
        assert err.param or err.code == "invalid_json", err.message  # a refusal names the field at fault
    assert accepted == allowed


def test_integers_are_integer_literals() -> None:
    """The one place the handler is stricter than JSON Schema, which counts 1.0 as an integer: like OpenAI's
    own types, a token id or a size is an integer literal. (Generators of schema-valid data send literals.)"""
    for body in ({"model": "m", "input": "x", "dimensions": 8.0}, {"model": "m", "input": [1.0, 2.0]}):
        with pytest.raises(InvalidRequest) as exc:
            parse_embedding_request(orjson.dumps(body))
        assert exc.value.code == "invalid_type"


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"model": "m", "input": "x", "colour": "red", "dimensions": 0}, "colour", "unknown_parameter"),
    ({"input": "x", "model": 5}, "model", "invalid_type"),
    ({"model": "m"}, "input", "missing_required_parameter"),
    ({"model": "m", "input": ["ok", 7]}, "input[1]", "invalid_type"),
    ({"model": "m", "input": ["x"] * 2049}, "input", "too_many_inputs"),
    ({"model": "m", "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
])
def test_refusals_speak_openai(body: Any, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_embedding_request(orjson.dumps(body))
    assert (exc.value.param, exc.value.code) == (param, code)


def test_admin_bodies_are_strict_json() -> None:
    assert parse_body(b'{"team": "t", "expires_at": 1700000000}', KeyCreate).expires_at == 1700000000
    assert parse_body(b'{"team": "t", "expires_at": "2030-01-01T00:00:00Z"}', KeyCreate).expires_at is not None


@pytest.mark.parametrize(("model", "body", "param", "code"), [
    (KeyCreate, b'{"team": "t", "limits": {"rpm": "5"}}', "limits.rpm", "invalid_type"),  # the document: integer
    (KeyCreate, b'{"team": "t", "expires_at": true}', "expires_at", "invalid_type"),  # not `expires_at.int`
    (KeyCreate, b'{"team": "t", "models": ["a", 1]}', "models[1]", "invalid_type"),
    (TeamConfig, b'{"limits": {"qps": 1}}', "limits.qps", "unknown_parameter"),
    (KeyPatch, b'{"limits": 5}', "limits", "invalid_type"),
])
def test_admin_refusals_name_the_field(model: type, body: bytes, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_body(body, model)  # type: ignore[type-var]
    assert (exc.value.param, exc.value.code) == (param, code)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_rendered_answers_match_their_published_models(encoding_format: str) -> None:
    body = embeddings_body(np.ones((2, 3), dtype=np.float32), model="m", encoding_format=encoding_format,
                           prompt_tokens=4)
    assert EmbeddingList.model_validate_json(body, strict=True).usage.total_tokens == 4
    error = orjson.loads(error_body(GatewayError("boom", param="input", code="x")))
    assert jsonschema.Draft202012Validator(
        {**DOCUMENT["components"]["schemas"]["ErrorResponse"], "components": DOCUMENT["components"]}
    ).is_valid(error)
