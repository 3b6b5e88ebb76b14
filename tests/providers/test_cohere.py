"""Cohere Embed v2: the request body, the answer, the model rules, against fixtures of the documented shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from providers import cohere
from providers.base import EmbedBatch, ErrorKind
from providers.cohere import CohereOptions, CohereProvider, from_payload, to_payload
from providers.http import HttpClient
from tests.support.vendor_shapes import assert_bad_response, fixture, vendor_error


def test_request_is_the_documented_one() -> None:
    batch = EmbedBatch(model="embed-v4.0", inputs=["hello", "goodbye"], dimensions=256, input_type="query")
    assert to_payload(batch, "NONE") == fixture("cohere_request.json")


@pytest.mark.parametrize(
    ("asked", "sent"),
    [(None, "search_document"), ("document", "search_document"), ("query", "search_query"),
     ("classification", "classification"), ("clustering", "clustering"), ("search_query", "search_query")],
)
def test_input_type_mapping(asked: str | None, sent: str) -> None:
    assert cohere.cohere_input_type(asked) == sent


def test_no_output_dimension_unless_asked() -> None:
    payload = to_payload(EmbedBatch(model="embed-english-v3.0", inputs=["a"]), "END")
    assert payload == {"model": "embed-english-v3.0", "texts": ["a"], "input_type": "search_document",
                       "embedding_types": ["float"], "truncate": "END"}


def test_token_ids_never_reach_the_payload() -> None:
    with pytest.raises(TypeError):
        to_payload(EmbedBatch(model="embed-v4.0", inputs=["a", (1, 2)]), "NONE")


@pytest.mark.parametrize(
    ("model", "sizes"),
    [("embed-v4.0", (256, 512, 1024, 1536)), ("embed-v5.0", (256, 512, 1024, 1536)),
     ("embed-english-v3.0", None), ("embed-multilingual-light-v3.0", None), ("embed-v3.0", None)],
)
def test_output_dimension_only_from_v4(model: str, sizes: tuple[int, ...] | None) -> None:
    assert cohere.output_dimensions(model) == sizes


def test_answer_rows_and_billed_tokens() -> None:
    result = from_payload(fixture("cohere_response.json"), 2)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (2, 3)
    np.testing.assert_allclose(result.vectors[1], [-0.0031585693, 0.0236206055, 0.057434082], rtol=1e-6)
    assert result.prompt_tokens == 2


@pytest.mark.parametrize(("meta", "tokens"), [({}, None), ({"billed_units": {"input_tokens": 7.0}}, 7),
                                              ({"billed_units": {}}, None)])
def test_billed_tokens_optional_and_integral(meta: dict[str, Any], tokens: int | None) -> None:
    body = {**fixture("cohere_response.json"), "meta": meta}
    assert from_payload(body, 2).prompt_tokens == tokens


@pytest.mark.parametrize(
    "body",
    [
        {"embeddings": {"float": [[1.0, 0.0]]}},  # one row for two inputs
        {"embeddings": {"float": [[1.0, 0.0], [1.0]]}},  # ragged
        {"embeddings": {"float": [[1.0, 0.0], ["1.0", "0.0"]]}},  # numbers as strings
        {"embeddings": {"float": [[1.0, None], [1.0, 0.0]]}},
        {"embeddings": {"float": [[], []]}},  # zero width
        {"embeddings": {"float": [[float("nan"), 0.0], [1.0, 0.0]]}},
        {"embeddings": {"int8": [[1, 0], [1, 0]]}},  # not the type asked for
        {"embeddings": [[1.0, 0.0], [1.0, 0.0]]},  # v1's embeddings_floats shape
        {"embeddings": {"float": [[1.0, 0.0], [1.0, 0.0]]}, "meta": {"billed_units": {"input_tokens": -1}}},
        {"embeddings": {"float": [[1.0, 0.0], [1.0, 0.0]]}, "meta": {"billed_units": {"input_tokens": 1.5}}},
        {"message": "internal error"},
        ["not", "an", "object"],
    ],
)
def test_malformed_answers_are_refused(body: Any) -> None:
    assert_bad_response(from_payload, body)


def test_capabilities() -> None:
    provider = CohereProvider(CohereOptions(api_key="k"), HttpClient())
    v3, v4 = provider.capabilities("embed-english-v3.0"), provider.capabilities("embed-v4.0")
    assert (v3.max_inputs, v3.max_tokens, v3.dimensions) == (96, None, None)
    assert v4.dimensions == (256, 512, 1024, 1536) and v4.takes_dimensions(512) and not v4.takes_dimensions(300)
    assert v3.input_type and not v3.token_ids  # text only: the dispatcher decodes token ids
    narrowed = CohereProvider(CohereOptions(api_key="k", max_batch_size=10), HttpClient())
    assert narrowed.capabilities("embed-v4.0").max_inputs == 10


def test_options() -> None:
    defaults = CohereOptions(api_key="k")
    assert (defaults.truncate, defaults.normalize) == ("NONE", True)
    with pytest.raises(ValidationError, match="api_key"):
        CohereOptions.model_validate({"api_key": ""})  # an unset ${COHERE_API_KEY}
    with pytest.raises(ValidationError, match="truncate"):
        CohereOptions.model_validate({"api_key": "k", "truncate": "MIDDLE"})


def test_cohere_error_body_is_relayed_scrubbed() -> None:
    body = fixture("cohere_error.json")
    body["message"] += " (key cohere-key-9)"
    error = vendor_error(400, body, secret="cohere-key-9")
    assert error.kind is ErrorKind.BAD_REQUEST
    assert "at most 96" in error.message and "cohere-key-9" not in error.message
