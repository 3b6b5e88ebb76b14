"""Azure OpenAI: URLs, bodies and credentials per API style, against fixtures of the documented shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from providers.azure import AzureOptions, AzureProvider, endpoint, to_payload
from providers.base import ANY_DIMENSIONS, EmbedBatch, ErrorKind
from providers.http import HttpClient
from providers.openai_answer import from_payload
from tests.support.vendor_shapes import fixture, vendor_error

BASE = "https://my-resource.openai.azure.com"
SMALL = f"{BASE}/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
BATCH = EmbedBatch(model="text-embedding-3-small", dimensions=256,
                   inputs=["The food was delicious and the waiter was friendly.", (9906, 1917)])


def options(**fields: Any) -> AzureOptions:
    return AzureOptions.model_validate({"api_base": BASE, "api_key": "k", **fields})


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({}, SMALL),
        ({"api_version": "2025-04-01-preview", "deployment": "prod emb"},
         f"{BASE}/openai/deployments/prod%20emb/embeddings?api-version=2025-04-01-preview"),
        ({"api_base": BASE + "/"}, SMALL),
        ({"api_style": "v1", "deployment": "prod"}, f"{BASE}/openai/v1/embeddings"),
    ],
)
def test_endpoint_per_style(fields: dict[str, Any], url: str) -> None:
    assert endpoint(options(**fields), "text-embedding-3-small") == url


def test_deployments_body_is_the_documented_one_without_model() -> None:
    assert to_payload(BATCH, options()) == fixture("azure_request_deployments.json")


def test_v1_body_names_the_deployment_as_model() -> None:
    assert to_payload(BATCH, options(api_style="v1", deployment="prod-embeddings")) == fixture("azure_request_v1.json")
    plain = to_payload(EmbedBatch(model="emb", inputs=["a"]), options(api_style="v1", upstream_encoding="float"))
    assert plain == {"model": "emb", "input": ["a"], "encoding_format": "float"}


def test_answer_is_openai_shaped_float_or_base64() -> None:
    result = from_payload(fixture("azure_response.json"), 2)
    np.testing.assert_allclose(result.vectors[0], [0.0023064255, -0.009327292, -0.0028842222], rtol=1e-6)
    np.testing.assert_array_equal(result.vectors[1], [0.5, -0.25, 0.125])
    assert result.prompt_tokens == 14


@pytest.mark.parametrize(
    "fields",
    [{}, {"api_key": "", "entra_token": ""}, {"api_key": "k", "entra_token": "t"}],
    ids=["neither", "both-empty", "both"],
)
def test_exactly_one_credential(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as exc:
        AzureOptions.model_validate({"api_base": BASE, **fields})
    assert "api_key" in str(exc.value) and "entra_token" in str(exc.value)


def test_api_base_is_required() -> None:
    with pytest.raises(ValidationError) as exc:
        AzureOptions.model_validate({"api_key": "k"})
    assert "api_base" in str(exc.value)


def test_credentials_become_the_right_header_and_are_scrubbed() -> None:
    assert options(api_key="key-1").auth_headers() == {"api-key": "key-1"}
    entra = AzureOptions.model_validate({"api_base": BASE, "entra_token": "eyJ0.token"})
    assert entra.auth_headers() == {"Authorization": "Bearer eyJ0.token"}
    assert entra.secret() == "eyJ0.token"  # the bare token is scrubbed from relayed text, not only the header
    assert "eyJ0.token" not in repr(entra)


def test_capabilities() -> None:
    http = HttpClient()
    caps = AzureProvider(options(), http).capabilities("text-embedding-3-small")
    assert (caps.max_inputs, caps.max_tokens, caps.dimensions) == (2048, 300_000, ANY_DIMENSIONS)
    assert caps.token_ids and not caps.input_type
    custom = AzureProvider(options(send_dimensions=False, max_batch_size=16), http).capabilities("my-deployment")
    assert (custom.max_inputs, custom.dimensions, custom.token_ids) == (16, None, False)


def test_azure_error_body_is_relayed_scrubbed() -> None:
    body = fixture("azure_error.json")
    body["error"]["message"] += " key=azure-key-123"
    error = vendor_error(429, body, secret="azure-key-123", headers={"Retry-After": "1"})
    assert error.kind is ErrorKind.RATE_LIMITED and error.retry_after == 1.0
    assert "exceeded call rate limit" in error.message and "azure-key-123" not in error.message
