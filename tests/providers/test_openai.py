"""The OpenAI translation functions, against fixtures of the documented shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from providers.base import EmbedBatch
from providers.openai import to_payload
from providers.openai_answer import from_payload
from tests.support.vendor_shapes import assert_bad_response, fixture


def test_to_payload_texts_and_dimensions() -> None:
    batch = EmbedBatch(model="text-embedding-3-small", inputs=["a", "b"], dimensions=256)
    assert to_payload(batch, "base64") == {
        "model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 256,
    }


def test_to_payload_token_ids_without_dimensions() -> None:
    payload = to_payload(EmbedBatch(model="m", inputs=[(1, 2), (3,)]), "float")
    assert payload == {"model": "m", "input": [[1, 2], [3]], "encoding_format": "float"}


def test_from_payload_float_reorders_by_index() -> None:
    result = from_payload(fixture("openai_response_float.json"), 2)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (2, 3)
    np.testing.assert_allclose(result.vectors[1], [0.5, -0.25, 0.125])
    np.testing.assert_allclose(result.vectors[0], [0.0023064255, -0.009327292, 0.015797347], rtol=1e-6)
    assert result.prompt_tokens == 8


def test_from_payload_base64_is_little_endian_float32() -> None:
    result = from_payload(fixture("openai_response_base64.json"), 1)
    np.testing.assert_array_equal(result.vectors, [[0.5, -0.25, 0.125]])
    assert result.prompt_tokens == 3


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]},
        {"data": [{"index": 5, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]},
        {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]},
        {"data": [{"index": 0, "embedding": {"x": 1}}, {"index": 1, "embedding": [1.0]}]},
        {"nothing": True},
        ["not", "an", "object"],
    ],
)
def test_from_payload_rejects_malformed_answers(body: Any) -> None:
    assert_bad_response(from_payload, body)


def test_missing_usage_leaves_the_count_to_the_gateway() -> None:
    result = from_payload({"data": [{"index": 0, "embedding": [1.0, 0.0]}]}, 1)
    assert result.prompt_tokens is None
