"""Gemini batchEmbedContents: the request body, the answer, the model rules, Google's error bodies, against
fixtures of the documented shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from providers import gemini
from providers.base import ANY_DIMENSIONS, EmbedBatch, ErrorKind
from providers.gemini import GeminiOptions, GeminiProvider, from_payload, to_payload
from providers.http import HttpClient
from tests.support.vendor_shapes import assert_bad_response, fixture, vendor_error


def test_request_is_the_documented_one() -> None:
    batch = EmbedBatch(model="gemini-embedding-001", inputs=["hello", "goodbye"], dimensions=768, input_type="query")
    assert to_payload(batch) == fixture("gemini_request.json")


def test_no_task_type_or_size_unless_asked() -> None:
    assert to_payload(EmbedBatch(model="models/text-embedding-004", inputs=["a"])) == \
        {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}}]}


@pytest.mark.parametrize(
    ("asked", "sent"),
    [(None, None), ("query", "RETRIEVAL_QUERY"), ("document", "RETRIEVAL_DOCUMENT"),
     ("SEMANTIC_SIMILARITY", "SEMANTIC_SIMILARITY"), ("CLASSIFICATION", "CLASSIFICATION"),
     ("CLUSTERING", "CLUSTERING"), ("CODE_RETRIEVAL_QUERY", "CODE_RETRIEVAL_QUERY"),
     ("QUESTION_ANSWERING", "QUESTION_ANSWERING"), ("FACT_VERIFICATION", "FACT_VERIFICATION"),
     ("RETRIEVAL_QUERY", "RETRIEVAL_QUERY")],
)
def test_input_type_mapping(asked: str | None, sent: str | None) -> None:
    assert gemini.task_type(asked) == sent


def test_token_ids_never_reach_the_payload() -> None:
    with pytest.raises(TypeError):
        to_payload(EmbedBatch(model="gemini-embedding-001", inputs=["a", (1, 2)]))


@pytest.mark.parametrize(
    ("base", "model", "url"),
    [(None, "gemini-embedding-001",
      "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"),
     ("http://127.0.0.1:9/", "models/text-embedding-004",
      "http://127.0.0.1:9/v1beta/models/text-embedding-004:batchEmbedContents")],
)
def test_endpoint(base: str | None, model: str, url: str) -> None:
    assert gemini.endpoint(base or gemini.DEFAULT_API_BASE, model) == url


@pytest.mark.parametrize(
    ("model", "modern"),
    [("gemini-embedding-001", True), ("models/gemini-embedding-001", True), ("text-embedding-004", True),
     ("gemini-embedding-exp-03-07", True), ("embedding-001", False)],
)
def test_capabilities(model: str, modern: bool) -> None:
    caps = GeminiProvider(GeminiOptions(api_key="k"), HttpClient()).capabilities(model)
    assert (caps.max_inputs, caps.max_tokens, caps.token_ids) == (100, None, False)
    assert caps.dimensions == (ANY_DIMENSIONS if modern else None) and caps.input_type is modern


def test_capabilities_narrowed_by_config() -> None:
    provider = GeminiProvider(GeminiOptions(api_key="k", max_batch_size=20), HttpClient())
    assert provider.capabilities("gemini-embedding-001").max_inputs == 20


def test_answer_rows_and_no_token_count() -> None:
    result = from_payload(fixture("gemini_response.json"), 2)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (2, 4)
    np.testing.assert_allclose(result.vectors[0], [0.0131, -0.0207, 0.0042, 0.0318], rtol=1e-6)
    assert result.prompt_tokens is None  # Gemini reports none: the gateway counts


@pytest.mark.parametrize(
    "body",
    [
        {"embeddings": [{"values": [1.0, 0.0]}]},  # one row for two inputs
        {"embeddings": [{"values": [1.0, 0.0]}, {"values": [1.0]}]},  # ragged
        {"embeddings": [{"values": [1.0, 0.0]}, {"values": ["1.0", "0.0"]}]},
        {"embeddings": [{"values": [1.0, None]}, {"values": [1.0, 0.0]}]},
        {"embeddings": [{"values": []}, {"values": []}]},
        {"embeddings": [{"values": [float("inf"), 0.0]}, {"values": [1.0, 0.0]}]},
        {"embedding": {"values": [1.0, 0.0]}},  # embedContent's single answer
        {"embeddings": [[1.0, 0.0], [1.0, 0.0]]},
        {"error": {"code": 500, "message": "internal", "status": "INTERNAL"}},
        ["not", "an", "object"],
    ],
)
def test_malformed_answers_are_refused(body: Any) -> None:
    assert_bad_response(from_payload, body)


def test_options() -> None:
    with pytest.raises(ValidationError, match="api_key"):
        GeminiOptions.model_validate({"api_key": ""})  # an unset ${GEMINI_API_KEY}
    with pytest.raises(ValidationError, match="task_type"):
        GeminiOptions.model_validate({"api_key": "k", "task_type": "CLUSTERING"})  # a request field, not config


def test_google_error_body_is_relayed_scrubbed() -> None:
    body = fixture("gemini_error.json")
    body["error"]["message"] += " (key AIza-gemini-key-9)"
    error = vendor_error(400, body, secret="AIza-gemini-key-9")
    assert error.kind is ErrorKind.BAD_REQUEST
    assert "at most 100 requests" in error.message and "AIza-gemini-key-9" not in error.message


def test_a_bad_key_answered_400_is_an_auth_failure() -> None:
    body = fixture("gemini_error_api_key.json")
    body["error"]["details"].append({"@type": "type.googleapis.com/google.rpc.DebugInfo",
                                     "detail": "Invalid API key: AIza-gemini-key-9"})
    error = vendor_error(400, body)
    assert error.kind is ErrorKind.AUTH and "AIza" not in error.message and "API key" not in error.message


@pytest.mark.parametrize(("headers", "seconds"), [({}, 37.0), ({"Retry-After": "2"}, 2.0)])
def test_quota_errors_say_when_to_retry(headers: dict[str, str], seconds: float) -> None:
    error = vendor_error(429, fixture("gemini_error_quota.json"), headers=headers)
    assert error.kind is ErrorKind.RATE_LIMITED and error.retry_after == seconds


@pytest.mark.parametrize("delay", ["soon", "-5s", "nans", 37])
def test_a_nonsense_retry_delay_is_ignored(delay: Any) -> None:
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}}
    assert vendor_error(429, body).retry_after is None
