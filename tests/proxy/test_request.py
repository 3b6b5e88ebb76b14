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
