"""The OpenAI answer read from its raw bytes (`parse_answer`, `AnswerReader`): the same result, or the same
error, as `from_payload` of the JSON-decoded body on every input, whole or cut into chunks anywhere, and
base64 answers read without a full JSON decode."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pybase64
import pytest

from providers import openai_answer
from providers.base import EmbedResult, ErrorKind, ProviderError
from providers.http import json_body
from providers.openai_answer import AnswerReader, from_payload
from providers.openai_answer import parse_answer as parse_any_size
from tests.support.vendor_shapes import FIXTURES

Outcome = tuple[Any, ...]


def parse_answer(body: bytes, expected: int) -> EmbedResult:
    """The fast path whatever the body's size (in service only large answers take it)."""
    return parse_any_size(body, expected, fast_from=0)
WHITESPACE = " \t\n\r"


def outcome(parse: Callable[[bytes, int], EmbedResult], body: bytes, expected: int) -> Outcome:
    """Everything a caller can see of a parse: the array (bytes, shape, dtype, layout) and the count, or
    the error's kind and message."""
    try:
        result = parse(body, expected)
    except ProviderError as err:
        return ("error", err.kind, err.message)
    vectors = result.vectors
    return ("ok", vectors.tobytes(), vectors.shape, vectors.dtype, vectors.flags.c_contiguous,
            vectors.flags.writeable, result.prompt_tokens)


def reference(body: bytes, expected: int) -> EmbedResult:
    return from_payload(json_body(body), expected)


def fed(chunks: list[bytes]) -> Callable[[bytes, int], EmbedResult]:
    """The answer read as it arrives in `chunks`, the fast way whatever its size."""
    def parse(body: bytes, expected: int) -> EmbedResult:
        assert b"".join(chunks) == body
        reader = AnswerReader(expected, fast_from=0)
        for chunk in chunks:
            reader.feed(chunk)
        return reader.result()

    return parse


def read_fast(chunks: list[bytes], expected: int) -> EmbedResult | None:
    """The fast read alone, whatever the size; None where it leaves the answer to the full decode."""
    reader = AnswerReader(expected, fast_from=0)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.fast_result()


def split(body: bytes, rng: random.Random) -> list[bytes]:
    """`body` cut at a few random places (an empty chunk now and then)."""
    cuts = sorted(rng.choices(range(len(body) + 1), k=rng.randint(1, 6)))
    return [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def assert_same(body: bytes, expected: int) -> Outcome:
    """The same outcome whole and in chunks cut at random places."""
    want = outcome(reference, body, expected)
    assert outcome(parse_answer, body, expected) == want, body[:300]
    rng = random.Random(body)
    for _ in range(3):
        chunks = split(body, rng)
        assert outcome(fed(chunks), body, expected) == want, chunks
    return want


def b64(values: Any) -> str:
    return pybase64.b64encode_as_string(np.asarray(values, "<f4").tobytes())


def answer(rows: list[Any], indices: list[int] | None = None, usage: Any = None, **top: Any) -> bytes:
    data = [{"object": "embedding", "index": i if indices is None else indices[i], "embedding": row}
            for i, row in enumerate(rows)]
    return json.dumps({"object": "list", "data": data, "model": "text-embedding-3-small",
                       **({"usage": usage} if usage is not None else {}), **top}).encode()


# --- the documented shapes: the fast path reads them, to the same result ------------------------------------

@pytest.mark.parametrize("name", ["openai_response_base64.json", "openai_response_base64_pretty.json"])
def test_openai_answers_as_sent_are_read_fast(name: str) -> None:
    body = (FIXTURES / name).read_bytes()  # pretty-printed: `"embedding": "..."` across spaces and newlines
    expected = len(json.loads(body)["data"])
    assert read_fast([body], expected) is not None
    kind, *_ = assert_same(body, expected)
    assert kind == "ok"


def test_rows_go_by_index_and_usage_is_read() -> None:
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    body = answer([b64(r) for r in rows], indices=[2, 0, 1], usage={"prompt_tokens": 7, "total_tokens": 7})
    result = parse_answer(body, 3)
    np.testing.assert_array_equal(result.vectors, [rows[1], rows[2], rows[0]])
    assert result.prompt_tokens == 7 and read_fast([body], 3) is not None
    assert_same(body, 3)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 256, 1536])  # every padding: none, "=" and "=="
def test_padded_and_unpadded_rows(width: int) -> None:
    rows = np.random.default_rng(width).standard_normal((4, width)).astype("<f4")
    body = answer([b64(r) for r in rows])
    np.testing.assert_array_equal(parse_answer(body, 4).vectors, rows)
    assert read_fast([body], 4) is not None
    assert_same(body, 4)


def test_many_long_rows_in_any_order() -> None:
    """More rows than one decoding call takes (a 2048 x 1536 answer is decoded a stretch at a time)."""
    rows = np.random.default_rng(5).standard_normal((100, 1536)).astype("<f4")
    indices = list(np.random.default_rng(6).permutation(100))
    body = answer([b64(rows[i]) for i in indices], indices=[int(i) for i in indices])
    np.testing.assert_array_equal(parse_answer(body, 100).vectors, rows)
    assert read_fast([body], 100) is not None
    assert_same(body, 100)


# --- what the fast path leaves to the full decode: the same result or error all the same -------------------



def swapped(body: bytes, old: bytes, new: bytes) -> bytes:
    assert old in body
    return body.replace(old, new)


CASES: dict[str, tuple[bytes, int]] = {
    "float lists": ((FIXTURES / "openai_response_float.json").read_bytes(), 2),
    "float and base64 mixed": ((FIXTURES / "azure_response.json").read_bytes(), 2),
    "escaped slash": (swapped(answer([b64([1.5, -0.7, 0.9])]), b"/", b"\\/"), 1),  # as some encoders write "/"
    "unicode escape inside the row": (swapped(answer([b64([1.0, 2.0, 3.0])]), b'"AACAP', b'"\\u0041ACAP'), 1),
    "key spelled with an escape": (swapped(answer([b64([1.0])]), b'"embedding": "', b'"embedd\\u0069ng": "'), 1),
    "escaped key, and a decoy key": (
        b'{"usage": {"x\\"embedding": "AACAPw=="}, "data": [{"embedd\\u0069ng": ""}, {"embedding": "AAAAQA=="}]}', 2),
    "escaped key holding a digit": (
        b'{"usage": {"x\\"embedding": "AACAPw=="}, "data": [{"embedd\\u0069ng": "0"}, {"embedding": "AAAAQA=="}]}', 2),
    "duplicate key, string last": (b'{"data": [{"embedding": [1.0], "embedding": "AACAPw=="}]}', 1),
    "duplicate key, string first": (b'{"data": [{"embedding": "AACAPw==", "embedding": [1.0]}]}', 1),
    "two string keys": (b'{"data": [{"embedding": "AAAAQA==", "embedding": "AACAPw=="}]}', 1),
    "nested embedding key": (b'{"data": [{"embedding": "AACAPw==", "meta": {"embedding": "AAAAQA=="}}]}', 1),
    "embedding key outside data": (b'{"extra": {"embedding": "AAAAQA=="}, "data": [{"embedding": "AACAPw=="}]}', 1),
    "the word as values only": (answer([b64([1.0])], model_note="embedding", kind={"embedding": 3}), 1),
    "empty row": (answer([""]), 1),
    "row not base64": (answer(["@@@@"]), 1),
    "row of 3 bytes": (answer([pybase64.b64encode_as_string(b"abc")]), 1),
    "raw newline in a row": (answer(["AACA\nPw=="]), 1),
    "non-ascii in a row": (swapped(answer(["AACAP\u00e9=="]), b"\\u00e9", "\u00e9".encode()), 1),
    "rows of two widths": (answer([b64([1.0]), b64([1.0, 2.0])]), 2),
    "same length, other padding": (answer(["AAAAAA==", "AAAAAAA="]), 2),
    "unpadded, then padded": (answer(["AAAAAAAA", "AAAAAA=="]), 2),
    "padding inside a row": (answer(["AAAAAAAA", "AAAA=AAA"]), 2),
    "NaN": (answer([b64([float("nan"), 1.0])]), 1),
    "infinity": (answer([b64([1.0, float("-inf")])]), 1),
    "index out of range": (answer([b64([1.0]), b64([2.0])], indices=[0, 5]), 2),
    "index repeated": (answer([b64([1.0]), b64([2.0])], indices=[1, 1]), 2),
    "index as true": (answer([b64([1.0]), b64([2.0])], indices=[True, 0]), 2),  # type: ignore[list-item]
    "index as string": (answer([b64([1.0])], indices=["0"]), 1),  # type: ignore[list-item]
    "no index": (b'{"data": [{"embedding": "AACAPw=="}, {"embedding": "AAAAQA=="}]}', 2),
    "too few rows": (answer([b64([1.0])]), 2),
    "too many rows": (answer([b64([1.0]), b64([2.0]), b64([3.0])]), 2),
    "no rows expected": (answer([]), 0),
    "negative usage": (answer([b64([1.0])], usage={"prompt_tokens": -1}), 1),
    "usage not an object": (answer([b64([1.0])], usage=[3]), 1),
    "data not a list": (b'{"data": {"embedding": "AACAPw=="}}', 1),
    "item not an object": (b'{"data": ["embedding", {"embedding": "AACAPw=="}]}', 1),
    "top level a list": (b'[{"embedding": "AACAPw=="}]', 1),
    "truncated inside a row": (answer([b64([1.0, 2.0])])[:60], 1),
    "trailing garbage": (answer([b64([1.0])]) + b" }", 1),
    "not json": (b"<html>502 Bad Gateway</html>", 1),
    "empty body": (b"", 1),
    "colon but no value": (b'{"data": [{"embedding": }]}', 1),
    "unterminated after the key": (b'{"data": [{"embedding": "', 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_odd_answers_read_as_the_full_decode_reads_them(case: str) -> None:
    body, expected = CASES[case]
    assert_same(body, expected)


@pytest.mark.parametrize("case", ["escaped slash", "unicode escape inside the row", "key spelled with an escape"])
def test_escapes_are_left_to_the_full_decode_and_still_read(case: str) -> None:
    body, expected = CASES[case]
    assert read_fast([body], expected) is None
    assert parse_answer(body, expected).vectors.shape == (1, 3 if "key" not in case else 1)


@pytest.mark.parametrize("case", ["escaped key, and a decoy key", "escaped key holding a digit", "not json",
                                  "truncated inside a row", "row not base64", "NaN", "too few rows"])
def test_garbage_is_a_bad_response(case: str) -> None:
    body, expected = CASES[case]
    with pytest.raises(ProviderError) as exc:
        parse_answer(body, expected)
    assert exc.value.kind is ErrorKind.BAD_RESPONSE


# --- property style: random answers, random layouts, and random damage to them ------------------------------

def dumps(value: Any, rng: random.Random) -> str:
    """JSON with random whitespace wherever JSON allows it, and objects in random key order."""
    def ws() -> str:
        return "".join(rng.choice(WHITESPACE) for _ in range(rng.choice([0, 0, 0, 1, 2, 5])))
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        inner = ",".join(f"{ws()}{json.dumps(k)}{ws()}:{ws()}{dumps(value[k], rng)}{ws()}" for k in keys)
        return "{" + (inner or ws()) + "}"
    if isinstance(value, list):
        return "[" + (",".join(f"{ws()}{dumps(v, rng)}{ws()}" for v in value) or ws()) + "]"
    return json.dumps(value)


def random_answer(rng: random.Random) -> tuple[bytes, int]:
    count, width = rng.randint(1, 6), rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 16, 64, 255])
    rows = np.random.default_rng(rng.getrandbits(32)).standard_normal((count, width)).astype("<f4")
    order = list(range(count))
    if rng.random() < 0.5:
        rng.shuffle(order)
    keep_index = order != list(range(count)) or rng.random() < 0.7  # the index defaults to the position
    data = [{"object": "embedding", "embedding": b64(rows[i]), **({"index": i} if keep_index else {})}
            for i in order]
    document: dict[str, Any] = {"object": "list", "data": data, "model": rng.choice(["m", "embedding", "a/b"])}
    if rng.random() < 0.8:
        tokens = rng.randint(0, 99)
        document["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return dumps(document, rng).encode(), count


DAMAGE = [b'"', b"\\", b"=", b"A", b"{", b"}", b"[", b"]", b":", b",", b" ", b"\n", b"\x00", "\u00e9".encode(),
          b'"embedding"', b'"embedding":"', b"1", b"-"]


def damaged(body: bytes, rng: random.Random) -> bytes:
    if not body:
        return rng.choice(DAMAGE)
    at = rng.randrange(len(body))
    span = rng.randint(1, 12)
    kind = rng.randrange(4)
    if kind == 0:
        return body[:at] + rng.choice(DAMAGE) + body[at + 1:]
    if kind == 1:
        return body[:at] + body[at + span:]
    if kind == 2:
        return body[:at] + body[at:at + span] + body[at:]
    return body[:at]


def test_random_answers_read_fast_to_the_same_result() -> None:
    rng = random.Random(7)
    for _ in range(300):
        body, count = random_answer(rng)
        assert read_fast([body], count) is not None, body[:300]
        kind, *_ = assert_same(body, count)
        assert kind == "ok"


@pytest.mark.parametrize("stretch", [None, 24])  # 24 bytes of base64 a call: rows decoded a few at a time
def test_random_damage_reads_as_the_full_decode_reads_it(stretch: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if stretch is not None:
        monkeypatch.setattr(openai_answer, "_STRETCH", stretch)
    rng = random.Random(11)
    for _ in range(1500):
        body, count = random_answer(rng)
        for _ in range(rng.randint(1, 3)):
            body = damaged(body, rng)
        assert_same(body, count + rng.choice([0, 0, 0, -1, 1]))


def test_only_a_large_answer_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small answer costs less through the full decode (one row: about a third less), so it goes that way."""
    cut: list[int] = []

    def record(cutter: Any, data: bytes, final: bool, begin: int = 0) -> None:
        cut.append(len(data))
        cutter._give_up()
    monkeypatch.setattr(openai_answer._Cutter, "_cut", record)
    small = answer([b64([1.0, 2.0])])
    large = answer([b64(np.ones(1536, "<f4"))] * 8)
    assert len(small) < openai_answer.FAST_FROM_BYTES <= len(large)
    for body, rows in ((small, 1), (large, 8)):
        assert parse_any_size(body, rows).vectors.shape[0] == rows
    assert cut == [len(large)]


# --- as it arrives: a chunk's end anywhere ------------------------------------------------------------------

SHAPES = {
    "compact": answer([b64([1.0, 2.0, 3.0]), b64([4.0, 5.0, 6.0])], indices=[1, 0], usage={"prompt_tokens": 3}),
    "pretty": (FIXTURES / "openai_response_base64_pretty.json").read_bytes(),
    "padded rows": answer([b64([1.0]), b64([2.0])]),
    "the word as a value": answer([b64([1.0, 2.0, 3.0])], model_note="embedding"),
    "spaces around the colon": swapped(answer([b64([1.0, 2.0, 3.0])]), b'"embedding": "', b'"embedding" \n : \t "'),
    "float answer": (FIXTURES / "openai_response_float.json").read_bytes(),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_chunk_may_end_at_any_byte(shape: str) -> None:
    """Every place one chunk can end and the next begin, and a byte at a time: the same outcome as whole."""
    body = SHAPES[shape]
    expected = body.count(b'"index"') or len(json.loads(body)["data"])
    want = outcome(reference, body, expected)
    for at in range(len(body) + 1):
        assert outcome(fed([body[:at], body[at:]]), body, expected) == want, at
        assert (read_fast([body[:at], body[at:]], expected) is not None) == (shape != "float answer"), at
    bytewise = [body[at:at + 1] for at in range(len(body))]
    assert outcome(fed(bytewise), body, expected) == want
    assert (read_fast(bytewise, expected) is not None) == (shape != "float answer")


def test_rows_arriving_a_chunk_at_a_time_are_read_fast() -> None:
    """A large answer in chunks of a socket read's size: read the fast way, to the full decode's rows."""
    rows = np.random.default_rng(3).standard_normal((64, 1536)).astype("<f4")
    body = answer([b64(r) for r in rows], usage={"prompt_tokens": 64, "total_tokens": 64})
    reader = AnswerReader(64)
    for at in range(0, len(body), 65536):
        reader.feed(body[at:at + 65536])
    fast = reader.fast_result()
    assert fast is not None and fast.prompt_tokens == 64
    np.testing.assert_array_equal(fast.vectors, rows)
