"""Request parsing rules in isolation (the SDK tests cover them end to end)."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import InvalidRequest
from proxy.request import parse_embedding_request


def parse(body: object) -> object:
    return parse_embedding_request(orjson.dumps(body))


def test_single_string() -> None:
    req = parse({"model": "m", "input": "hi"})
    assert req.inputs == ("hi",) and req.single and req.encoding_format == "float"  # type: ignore[attr-defined]


def test_single_token_list_is_one_input() -> None:
    req = parse({"model": "m", "input": [1, 2, 3], "encoding_format": "base64"})
    assert req.inputs == ((1, 2, 3),) and req.single  # type: ignore[attr-defined]


def test_mixed_strings_and_token_lists() -> None:
    req = parse({"model": "m", "input": ["a", [1, 2]], "dimensions": 8, "user": "u1"})
    assert req.inputs == ("a", (1, 2)) and not req.single  # type: ignore[attr-defined]
    assert req.dimensions == 8 and req.user == "u1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": 5, "input": "x"}, "model"),
        ({"model": "m", "input": [True]}, "input[0]"),
        ({"model": "m", "input": [[1, True]]}, "input[0]"),
        ({"model": "m", "input": "x", "dimensions": True}, "dimensions"),
        ({"model": "m", "input": "x", "user": "u" * 513}, "user"),
    ],
)
def test_rejections_name_the_param(body: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse(body)
    assert exc.value.param == param


def test_token_ids_over_the_request_cap_are_refused_before_the_rest_is_checked() -> None:
    # The first two arrays already hold 400,000 ids: the malformed items after them are never looked at.
    body = {"model": "m", "input": [[1] * 200_000, [2] * 200_000, [3, -5], "", {"not": "an input"}]}
    with pytest.raises(InvalidRequest) as exc:
        parse(body)
    assert (exc.value.param, exc.value.code) == ("input", "max_tokens_per_request")
    assert "Requested 400002 tokens" in exc.value.message and "300000" in exc.value.message


def test_one_long_token_array_is_one_input() -> None:
    req = parse({"model": "m", "input": list(range(1, 3001))})
    assert req.inputs == (tuple(range(1, 3001)),) and req.single  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [([3, "x"], "input", "invalid_type"), ([3, 1.0], "input", "invalid_type"), ([3, [4]], "input", "invalid_type"),
     ([3, -4], "input", "invalid_value"), ([[3, 4], [5, None]], "input[1]", "invalid_type")],
)
def test_bad_token_ids_are_refused_naming_their_array(raw: list[object], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse({"model": "m", "input": raw})
    assert (exc.value.param, exc.value.code) == (param, code)
    assert "[1]' " in exc.value.message  # the position inside the array
