"""schemathesis against a live gateway, driven by the gateway's own `GET /openapi.json`.

A real gateway on a real port with authentication, quotas and the admin API on a redis-server this test
starts, and the fake OpenAI upstream as its backend. Every operation gets a fixed, derandomized budget of
examples (schema-valid and schema-violating), then stateful sequences along the document's links: no 5xx,
every status, content type, header and body as the document says, no schema-violating request accepted,
and every error in OpenAI's shape.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import orjson
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.openapi import build_document
from testkit.redis_server import RedisServer
from testkit.servers import ThreadedServer
from tests.conftest import running_gateway, serving_openai, upstream_settings
from tests.support.admin import MASTER_KEY, create_key

# The budget: examples per operation (plus schemathesis's deterministic coverage cases), and stateful scenarios.
EXAMPLES_PER_OPERATION = int(os.environ.get("CONTRACT_EXAMPLES", "150"))  # raise it locally to hunt further
SCENARIOS, STEPS = 60, 8
SEED = 20240531
# Generous limits, so quotas are charged and reported on every call without refusing the run.
LIMITS = {"rpm": 1_000_000, "tpm": 10**12, "tokens_per_day": 10**13, "tokens_per_month": 10**14}


@dataclass(frozen=True)
class Contract:
    gateway: ThreadedServer
    team_key: str


@pytest.fixture(scope="module")
def contract(redis_server: RedisServer) -> Iterator[Contract]:
    with serving_openai() as fake:
        store = {"url": redis_server.url, "prefix": f"contract{secrets.token_hex(4)}"}
        settings = upstream_settings(fake, auth={"master_key": MASTER_KEY}, store=store)
        with running_gateway(settings) as gateway:
            yield Contract(gateway, create_key(gateway.url, team="contract", limits=LIMITS)["key"])


def openai_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error body is exactly OpenAI's `{"error": {"message", "type", "param", "code"}}`."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert "Traceback" not in body["error"]["message"]
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, openai_error_shape]

# The document the gateway below serves (a test checks that it does), built when pytest collects so that
# every operation is a test of its own. (schemathesis.pytest.from_fixture, which would load it from the live
# gateway, fails under pytest 9: it reads a private attribute pytest no longer has.)
DOCUMENT = build_document(["text-embedding-3-small", "small", "ada"], auth_enabled=True)
CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "deterministic": True,
                   "database": "none", "with-security-parameters": False},
})
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def authorization(case: Any, contract: Contract) -> dict[str, str]:
    """The master key for the admin API, a team key (its quotas charged) for the rest."""
    return {"Authorization": f"Bearer {MASTER_KEY if case.path.startswith('/admin') else contract.team_key}"}


def test_the_fuzzed_document_is_the_served_one(contract: Contract) -> None:
    assert httpx.get(contract.gateway.url + "/openapi.json").json() == orjson.loads(orjson.dumps(DOCUMENT))


@schema.parametrize()
def test_the_gateway_keeps_its_contract(case: Any, contract: Contract) -> None:
    case.call_and_validate(base_url=contract.gateway.url, headers=authorization(case, contract), checks=CHECKS)


def test_the_gateway_keeps_its_contract_across_calls(contract: Contract) -> None:
    """Sequences that follow the document's links: a key made, then read, changed, revoked, its usage read."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": contract.gateway.url, "headers": authorization(case, contract)}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Workflow.run(settings=hypothesis.settings(max_examples=SCENARIOS, stateful_step_count=STEPS, derandomize=True,
                                              database=None, deadline=None,
                                              suppress_health_check=list(hypothesis.HealthCheck)))
