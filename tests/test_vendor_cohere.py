"""A real gateway in front of the fake Cohere Embed v2 API, called as an OpenAI client would."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import running_gateway
from tests.fakes.cohere import FakeCohere
from tests.fakes.vendor import serving
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

MODEL = "cohere-en"
DEPLOYMENT = f"{MODEL}/cohere"  # the name a short-form entry's one deployment gets


def config(fake: FakeCohere, upstream: str = "embed-english-v3.0", **fields: Any) -> dict[str, Any]:
    return {"models": [{"name": MODEL, "provider": "cohere", "upstream_model": upstream, "api_base": fake.url,
                        "api_key": fake.api_key, "dimensions": fake.dims, **fields}]}


def test_200_inputs_go_as_96_96_8_and_come_back_in_order() -> None:
    texts = [f"document number {i}" for i in range(200)]
    with serving(FakeCohere()) as fake, running_gateway(config(fake)) as gw:
        reply = assert_known_vectors(gw, MODEL, texts, [fake.vector(t) for t in texts])  # unit length again
        assert reply.headers["x-embedgate-deployment"] == DEPLOYMENT
        assert reply.prompt_tokens == 3 * 200  # Cohere's billed_units, summed over the three calls
    assert call_sizes(fake, texts) == [96, 96, 8]
    assert {call["input_type"] for call in fake.calls} == {"search_document"}  # v2 requires one: the default


def test_input_type_is_mapped_or_passed_through() -> None:
    with serving(FakeCohere()) as fake, running_gateway(config(fake)) as gw:
        sdk_client(gw).embeddings.create(model=MODEL, input=["where is the cat?"], extra_body={"input_type": "query"})
        assert fake.calls[-1]["input_type"] == "search_query"
        for asked, sent in [("document", "search_document"), ("clustering", "clustering"),
                            ("search_query", "search_query")]:
            embed_ok(gw.url, [f"a text sent as {asked}"], model=MODEL, input_type=asked)
            assert fake.calls[-1]["input_type"] == sent


def test_rate_limit_with_retry_after_is_retried_transparently() -> None:
    with serving(FakeCohere()) as fake, running_gateway(config(fake)) as gw:
        assert_rate_limit_retried(gw, fake, MODEL, DEPLOYMENT, fake.vector("try again later"),
                                  headers={"Retry-After": "1"})


def test_dimensions_on_embed_v4_only_in_the_sizes_it_takes() -> None:
    with serving(FakeCohere(dims=1536)) as fake, \
            running_gateway(config(fake, "embed-v4.0", supports_dimensions=True)) as gw:
        assert_known_vectors(gw, MODEL, ["short vector"], [fake.vector("short vector", 256)], dimensions=256)
        assert fake.calls[-1]["output_dimension"] == 256
        embed_ok(gw.url, ["full vector"], model=MODEL)
        assert "output_dimension" not in fake.calls[-1]
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input="x", dimensions=300)
        assert "256, 512, 1024, 1536" in assert_openai_error(exc, 400, "dimensions", "unsupported_parameter")["message"]


def test_embed_v3_takes_no_dimensions() -> None:
    with serving(FakeCohere()) as fake, running_gateway(config(fake)) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input="x", dimensions=32)
        assert_openai_error(exc, 400, "dimensions", "unsupported_parameter")
    assert fake.received == 0


def test_token_ids_reach_cohere_as_text() -> None:
    texts = ["hello world", "good night"]
    with serving(FakeCohere()) as fake, running_gateway(config(fake)) as gw:
        assert_token_ids_sent_as_text(gw, fake, MODEL, texts, [fake.vector(t) for t in texts])


def test_vendor_errors_become_openai_errors_without_the_key() -> None:
    with serving(FakeCohere()) as fake, running_gateway(config(fake)) as gw:
        assert_vendor_errors_scrubbed(
            gw, fake, MODEL, {"message": f"invalid request: key {fake.api_key} cannot embed this"},
            "cannot embed this", (401, {"message": f"invalid api token {fake.api_key}"}))


def test_truncate_none_refuses_an_over_long_text_end_cuts_it() -> None:
    long_text = " ".join(f"w{i}" for i in range(600))
    kept = " ".join(f"w{i}" for i in range(512))
    with serving(FakeCohere()) as fake:
        with running_gateway(config(fake)) as gw, pytest.raises(openai.BadRequestError) as exc:
            sdk_client(gw).embeddings.create(model=MODEL, input=long_text)
        assert_openai_error(exc, 400, None, "upstream_invalid_request")
        assert fake.calls[-1]["truncate"] == "NONE"
        with running_gateway(config(fake, truncate="END")) as gw:
            assert_known_vectors(gw, MODEL, [long_text], [fake.vector(kept)])


def test_normalize_false_passes_cohere_rows_as_they_are() -> None:
    with serving(FakeCohere(scale=2.5)) as fake, running_gateway(config(fake, normalize=False)) as gw:
        assert_known_vectors(gw, MODEL, ["raw row"], [[2.5 * v for v in fake.vector("raw row")]])
