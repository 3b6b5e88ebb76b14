"""The response body: base64 built from pieces is byte for byte what orjson writes for the same answer, and a
large answer rendered a piece at a time (`Pieces`) is byte for byte the body rendered whole."""

from __future__ import annotations

import base64
import json

import numpy as np
import orjson
import pytest

from proxy import render
from proxy.render import Pieces, embeddings_answer, embeddings_body

MODELS = ["text-embedding-3-small", 'quo"te', "back\\slash", "new\nline\ttab\x01", "ünï/cødé 😀", "</script>", ""]


def orjson_body(vectors: np.ndarray, model: str, prompt_tokens: int) -> bytes:
    """The body as one orjson.dumps of the whole answer writes it."""
    data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode()}
            for i, row in enumerate(vectors)]
    return orjson.dumps({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})


@pytest.mark.parametrize("model", MODELS)
# Widths that are a multiple of 3 encode the whole matrix in one call and slice it per row; the others row by row.
@pytest.mark.parametrize(("rows", "width"), [(1, 1), (1, 3), (2, 2), (3, 4), (5, 256), (2, 1536), (0, 8), (0, 6),
                                             (0, 0), (12, 3), (11, 768), (3, 1024)])
def test_base64_body_is_what_orjson_writes(model: str, rows: int, width: int) -> None:
    vectors = np.random.default_rng(rows * 1000 + width).standard_normal((rows, width)).astype(np.float32)
    body = embeddings_body(vectors, model=model, encoding_format="base64", prompt_tokens=rows * 7)
    assert body == orjson_body(vectors, model, rows * 7)
    decoded = json.loads(body)
    assert decoded["model"] == model and decoded["usage"] == {"prompt_tokens": rows * 7, "total_tokens": rows * 7}
    back = [np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in decoded["data"]]
    assert [item["index"] for item in decoded["data"]] == list(range(rows))
    np.testing.assert_array_equal(np.reshape(back, (rows, width)), vectors)


def test_base64_body_of_a_non_contiguous_array() -> None:
    wide = np.arange(24, dtype=np.float32).reshape(3, 8)
    body = embeddings_body(wide[:, :4], model="m", encoding_format="base64", prompt_tokens=1)
    assert body == orjson_body(np.ascontiguousarray(wide[:, :4]), "m", 1)


def test_float_body() -> None:
    vectors = np.asarray([[0.5, -0.25], [0.125, 1.0]], np.float32)
    body = embeddings_body(vectors, model='a"b', encoding_format="float", prompt_tokens=3)
    assert json.loads(body) == {"object": "list", "model": 'a"b', "usage": {"prompt_tokens": 3, "total_tokens": 3},
                                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
                                         {"object": "embedding", "index": 1, "embedding": [0.125, 1.0]}]}


@pytest.mark.parametrize("encoding_format", ["base64", "float"])
@pytest.mark.parametrize(("rows", "width"), [(1, 7), (11, 4), (12, 3), (10, 5), (101, 6), (3, 40), (1001, 2)])
@pytest.mark.parametrize("model", ["m", 'quo"te'])
def test_an_answer_in_pieces_is_the_body_whole(encoding_format: str, rows: int, width: int, model: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of a few rows each (rows of any width, row counts of 1 to 4 digits): joined, the same bytes
    as the whole body; a base64 one's length known before it is rendered."""
    monkeypatch.setattr(render, "PIECES_FROM", 1)
    monkeypatch.setattr(render, "PIECE_VALUES", 16)
    vectors = np.random.default_rng(rows + width).standard_normal((rows, width)).astype(np.float32)
    whole = embeddings_body(vectors, model=model, encoding_format=encoding_format, prompt_tokens=rows)
    answer = embeddings_answer(vectors, model=model, encoding_format=encoding_format, prompt_tokens=rows)
    assert isinstance(answer, Pieces)
    parts = list(answer.parts)
    assert len(parts) > 2 and b"".join(parts) == whole
    assert answer.length == (len(whole) if encoding_format == "base64" else None)


def test_only_a_large_answer_goes_in_pieces() -> None:
    small = np.ones((2, 3), np.float32)
    assert embeddings_answer(small, model="m", encoding_format="base64", prompt_tokens=1) == embeddings_body(
        small, model="m", encoding_format="base64", prompt_tokens=1)
    large = np.ones((render.PIECES_FROM // 512, 512), np.float32)
    assert isinstance(embeddings_answer(large, model="m", encoding_format="base64", prompt_tokens=1), Pieces)
