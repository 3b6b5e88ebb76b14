"""Model-dependent validation in isolation: token-id vocabulary, and byte bounds in place of counts (the SDK
tests cover the rest end to end)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from providers.http import HttpClient
from providers.tokenizers import cl100k
from proxy.errors import InvalidRequest
from proxy.request import parse_embedding_request
from proxy.routing import Route, Router
from proxy.settings import parse_settings
from proxy.validation import Counted, check_token_ids, utf8_bytes, validate

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


# --- byte bounds in place of counts (validate's exact=False) ---------------------------------------------

def route_to(config: dict[str, Any], model: str = "m") -> Route:
    settings = parse_settings(config)
    return Router(settings.models, HttpClient(), settings.dispatch).resolve(model)


def openai_model(**options: Any) -> dict[str, Any]:
    return {"models": [{"name": "m", "provider": "openai", "api_base": "http://127.0.0.1:9/v1", "api_key": "k",
                        **options}]}


async def validated(route: Route, raw: Any, exact: bool = False) -> Counted:
    request = parse_embedding_request(orjson.dumps({"model": "m", "input": raw}))
    return await validate(request, route, route.target(), exact=exact)


def test_a_cl100k_count_never_exceeds_the_utf8_bytes() -> None:
    """The rule the bounds stand on: every cl100k token is at least one byte of the text."""
    rng = random.Random(3)
    alphabet = ["a", " ", "é", "😀", "\u0301", "中", "\n", "!", "\ud83d", "\ude00", "\ud800", "0", "\x00"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(3000)]
    for text, count in zip(texts, cl100k().count(texts), strict=True):
        assert count <= utf8_bytes(text), repr(text)


@pytest.mark.asyncio
async def test_short_texts_are_bounded_not_counted() -> None:
    counted = await validated(route_to(openai_model()), ["hello world", "héllo wörld 😀", [1, 2, 3]])
    assert counted.bounded and counted.tokens == (11, 18, 3)  # UTF-8 bytes; a token array is its own count
    exact = await validated(route_to(openai_model()), ["hello world", "héllo wörld 😀", [1, 2, 3]], exact=True)
    assert not exact.bounded and exact.tokens == (2, 7, 3)


@pytest.mark.asyncio
@pytest.mark.parametrize(("options", "raw", "tokens"), [
    ({}, ["a" * 9000], (1125,)),  # over 8192 bytes, under 8192 tokens: counted, and passes
    ({"max_input_tokens": 10}, ["hello world, hello"], (4,)),  # bytes over the model's own per-input limit
    ({"max_batch_tokens": 20}, ["hello world", "hello world"], (2, 2)),  # bytes over a per-call cap
    ({}, ["word " * 7000] * 9, (7001,) * 9),  # 315,000 bytes over the 300,000 per request; 63,009 tokens
])
async def test_bounds_that_could_cross_a_limit_are_counted(options: dict[str, Any], raw: Any,
                                                           tokens: tuple[int, ...]) -> None:
    counted = await validated(route_to(openai_model(**options)), raw)
    assert not counted.bounded and counted.tokens == tokens


@pytest.mark.asyncio
async def test_the_limits_still_refuse_with_openai_errors() -> None:
    route = route_to(openai_model())
    with pytest.raises(InvalidRequest) as exc:
        await validated(route, ["fine", "hello " * 8200])
    assert (exc.value.param, exc.value.code) == ("input[1]", "context_length_exceeded")
    with pytest.raises(InvalidRequest) as exc:
        await validated(route, ["word " * 8000] * 38)
    assert (exc.value.param, exc.value.code) == ("input", "max_tokens_per_request")


@pytest.mark.asyncio
async def test_a_tokenizer_without_the_byte_rule_always_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    route = route_to(openai_model())

    class Words:
        vocab_size = 10

        def count(self, texts: Sequence[str]) -> list[int]:
            return [len(text.split()) + 2 for text in texts]  # a [CLS] and a [SEP]: more tokens than bytes

    monkeypatch.setattr(type(route.service), "tokenizer", property(lambda self: Words()))
    counted = await validated(route, ["a"])
    assert not counted.bounded and counted.tokens == (3,)
