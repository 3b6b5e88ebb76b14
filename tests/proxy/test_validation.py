"""Model-dependent validation in isolation: token-id vocabulary (the SDK tests cover the rest end to end)."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import InvalidRequest
from proxy.request import parse_embedding_request
from proxy.validation import check_token_ids

# cl100k_base has no token at 100256 nor at 100261-100275: `decode` raises KeyError on them.
HOLES = [100256, *range(100261, 100276)]


@pytest.mark.parametrize("hole", HOLES)
def test_undecodable_cl100k_ids_are_refused_naming_the_input(hole: int) -> None:
    request = parse_embedding_request(orjson.dumps({"model": "m", "input": ["text", [1, 2], [3, hole, 4]]}))
    with pytest.raises(InvalidRequest) as exc:
        check_token_ids(request)
    assert (exc.value.param, exc.value.code) == ("input[2]", "invalid_value")
    assert str(hole) in exc.value.message


@pytest.mark.parametrize(("raw", "param"), [([5, 100277], "input"), ([[5], [1], [2**64 - 1]], "input[2]")])
def test_ids_outside_the_vocabulary_are_refused(raw: list[object], param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_token_ids(parse_embedding_request(orjson.dumps({"model": "m", "input": raw})))
    assert exc.value.param == param


def test_every_other_id_passes() -> None:
    check_token_ids(parse_embedding_request(orjson.dumps(
        {"model": "m", "input": [[i for i in range(100277) if i not in HOLES], "text", [0]]})))
