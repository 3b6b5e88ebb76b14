"""Voyage embeddings: the request body, the answer, the model rules, against fixtures of the documented shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from providers import voyage
from providers.base import EmbedBatch, ErrorKind, ProviderError
from providers.http import HttpClient
from providers.voyage import VoyageOptions, VoyageProvider, from_payload, to_payload
from tests.support.vendor_shapes import assert_bad_response, fixture, vendor_error


def test_request_is_the_documented_one() -> None:
    batch = EmbedBatch(model="voyage-3.5", inputs=["hello", "goodbye"], dimensions=256, input_type="query")
    assert to_payload(batch, truncation=False) == fixture("voyage_request.json")


def test_no_input_type_is_sent_as_null_and_no_output_dimension_unless_asked() -> None:
    payload = to_payload(EmbedBatch(model="voyage-law-2", inputs=["a"]), truncation=True)
    assert payload == {"input": ["a"], "model": "voyage-law-2", "input_type": None, "truncation": True,
                       "output_dtype": "float"}


@pytest.mark.parametrize("asked", ["query", "document"])
def test_query_and_document_are_voyage_words(asked: str) -> None:
    assert to_payload(EmbedBatch(model="voyage-4", inputs=["a"], input_type=asked), False)["input_type"] == asked


@pytest.mark.parametrize("asked", ["classification", "search_query", "QUERY"])
def test_other_input_types_are_refused_before_any_call(asked: str) -> None:
    with pytest.raises(ProviderError) as exc:
        to_payload(EmbedBatch(model="voyage-4", inputs=["a"], input_type=asked), False)
    assert exc.value.kind is ErrorKind.BAD_REQUEST and "'query' or 'document'" in exc.value.message


def test_token_ids_never_reach_the_payload() -> None:
    with pytest.raises(TypeError):
        to_payload(EmbedBatch(model="voyage-3.5", inputs=["a", (1, 2)]), False)


@pytest.mark.parametrize(
    ("model", "sizes"),
    [("voyage-3-large", (256, 512, 1024, 2048)), ("voyage-3.5", (256, 512, 1024, 2048)),
     ("voyage-3.5-lite", (256, 512, 1024, 2048)), ("voyage-code-3", (256, 512, 1024, 2048)),
     ("voyage-4", (256, 512, 1024, 2048)), ("voyage-4-large", (256, 512, 1024, 2048)),
     ("voyage-4-lite", (256, 512, 1024, 2048)), ("voyage-finance-2", None), ("voyage-law-2", None),
     ("voyage-2", None)],
)
def test_output_dimension_only_where_documented(model: str, sizes: tuple[int, ...] | None) -> None:
    assert voyage.output_dimensions(model) == sizes


@pytest.mark.parametrize(
    ("model", "documented"),
    [("voyage-3-large", 120_000), ("voyage-4-large", 120_000), ("voyage-code-3", 120_000),
     ("voyage-3.5", 320_000), ("voyage-4", 320_000), ("voyage-3.5-lite", 1_000_000), ("voyage-4-lite", 1_000_000),
     ("voyage-something-new", 120_000)],
)
def test_token_cap_per_model_with_the_margin(model: str, documented: int) -> None:
    provider = VoyageProvider(VoyageOptions(api_key="k"), HttpClient())
    caps = provider.capabilities(model)
    assert (caps.max_inputs, caps.max_tokens) == (1000, int(documented * voyage.TOKEN_MARGIN))
    assert caps.max_tokens is not None and caps.max_tokens < documented


def test_capabilities_and_narrowing() -> None:
    caps = VoyageProvider(VoyageOptions(api_key="k"), HttpClient()).capabilities("voyage-3.5")
    assert caps.input_type and not caps.token_ids  # text only: the dispatcher decodes token ids
    assert caps.takes_dimensions(512) and not caps.takes_dimensions(300)
    narrowed = VoyageProvider(VoyageOptions(api_key="k", max_batch_size=10, max_batch_tokens=5000), HttpClient())
    assert (narrowed.capabilities("voyage-3.5").max_inputs, narrowed.capabilities("voyage-3.5").max_tokens) == \
        (10, 5000)


def test_answer_rows_and_total_tokens() -> None:
    result = from_payload(fixture("voyage_response.json"), 2)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (2, 3)
    np.testing.assert_allclose(result.vectors[1], [-0.0031585693, 0.0236206055, 0.057434082], rtol=1e-6)
    assert result.prompt_tokens == 10


def test_rows_are_placed_by_index() -> None:
    body = fixture("voyage_response.json")
    body["data"].reverse()
    np.testing.assert_allclose(from_payload(body, 2).vectors, from_payload(fixture("voyage_response.json"), 2).vectors)


@pytest.mark.parametrize(
    "body",
    [
        {"data": [{"embedding": [1.0, 0.0], "index": 0}]},  # one row for two inputs
        {"data": [{"embedding": [1.0, 0.0], "index": 0}, {"embedding": [1.0], "index": 1}]},  # ragged
        {"data": [{"embedding": [1.0, 0.0], "index": 0}, {"embedding": [1.0, 0.0], "index": 0}]},  # index twice
        {"data": [{"embedding": [1.0, None], "index": 0}, {"embedding": [1.0, 0.0], "index": 1}]},
        {"data": [{"embedding": [float("nan"), 0.0], "index": 0}, {"embedding": [1.0, 0.0], "index": 1}]},
        {"data": [{"embedding": [1.0, 0.0], "index": 0}, {"embedding": [1.0, 0.0], "index": 1}],
         "usage": {"total_tokens": -3}},
        {"detail": "internal error"},
        ["not", "an", "object"],
    ],
)
def test_malformed_answers_are_refused(body: Any) -> None:
    assert_bad_response(from_payload, body)


def test_options() -> None:
    assert VoyageOptions(api_key="k").truncation is False  # never embed a silently cut text
    with pytest.raises(ValidationError, match="api_key"):
        VoyageOptions.model_validate({"api_key": ""})  # an unset ${VOYAGE_API_KEY}
    with pytest.raises(ValidationError, match="truncation"):
        VoyageOptions.model_validate({"api_key": "k", "truncation": "sometimes"})


def test_voyage_detail_body_is_relayed_scrubbed() -> None:
    body = fixture("voyage_error.json")
    body["detail"] += " (key pa-voyage-key-9)"
    error = vendor_error(400, body, secret="pa-voyage-key-9")
    assert error.kind is ErrorKind.BAD_REQUEST
    assert "max allowed tokens per submitted batch is 120000" in error.message
    assert "pa-voyage-key-9" not in error.message


def test_voyage_401_says_nothing_of_the_key() -> None:
    error = vendor_error(401, {"detail": "Provided API key pa-voyage-key-9 is invalid."}, secret="")
    assert error.kind is ErrorKind.AUTH and "pa-voyage-key-9" not in error.message
