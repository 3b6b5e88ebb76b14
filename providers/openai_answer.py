"""OpenAI's embeddings answer, float or base64, read into rows in input order (OpenAI, Azure and every
OpenAI-compatible server answer this shape).

`from_payload` reads the decoded JSON: the reference. `AnswerReader` reads the raw bytes as they arrive and
gives the same result, or the same error, without a full JSON decode of a large base64 answer.

Why read as the bytes arrive: a 2048 x 1536 base64 answer is 16 MB of JSON, nearly all of it the rows'
base64 strings. Read whole, then decoded, the gateway's work on it comes after the last byte, and adds
to the client's wait. Read a chunk at a time, most of it is done while the rest is still on its way.

How the fast read is sound. Rows are cut out where `"embedding"` is a key with a string value; the small
rest (the skeleton) is decoded as JSON, and the rows' base64 goes straight into one float32 array. The
skeleton holds no backslash and every row only base64 characters (checked), so every `"` in the body
delimits a string and each cut is the inside of one string, the value of an `embedding` key; nothing but
base64 is taken out, so the body is valid JSON exactly when the skeleton is, and they decode to the same
document but for those values. Every such value is cut (no escape can spell the key otherwise), so when
the skeleton's n data items each show an emptied `embedding` and n cuts were made, the k-th cut is the
k-th item's. Anything else goes through `from_payload`, for the same result or the same error.

The cuts made a chunk at a time are the cuts made on the whole body: a key or a row that a chunk's end
cuts short is kept and read again with the next chunk, never taken as it stands.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pybase64

from providers.base import EmbedResult, Vectors, bad_response, check_shape, check_tokens, stack_rows
from providers.http import json_body

FAST_FROM_BYTES = 32 * 1024  # below this a plain decode is cheaper than the cut (measured on one 64-dim row)
_KEY = b'"embedding"'
_KEY_VALUE = re.compile(rb'"embedding"[ \t\n\r]*:[ \t\n\r]*(")?')  # JSON's whitespace, exactly
_WHITESPACE = b" \t\n\r"
_STRETCH = 1 << 18  # bytes of base64 decoded per call


def _vector(raw: Any) -> np.ndarray:
    if isinstance(raw, str):
        return np.frombuffer(pybase64.b64decode(raw, validate=True), dtype="<f4")
    if isinstance(raw, list):
        return np.asarray(raw, dtype=np.float32)
    raise bad_response("embedding is neither a float list nor base64")


def from_payload(body: Any, expected: int) -> EmbedResult:
    """Parse an OpenAI-shaped answer, float or base64, into rows in input order."""
    try:
        items = body["data"]
        rows: list[np.ndarray | None] = [None] * expected
        for position, item in enumerate(items):
            index = item.get("index", position)
            if not isinstance(index, int) or not 0 <= index < expected or rows[index] is not None:
                raise bad_response(f"backend returned a bad index {index!r:.20}")
            rows[index] = _vector(item["embedding"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise bad_response("backend answer is not an OpenAI embeddings list") from err
    if any(row is None for row in rows) or len({row.shape for row in rows if row is not None}) > 1:
        raise bad_response("backend answer is missing embeddings or mixes sizes")
    usage = body.get("usage")
    tokens = check_tokens(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    vectors = stack_rows([row for row in rows if row is not None]) if expected else np.zeros((0, 0), np.float32)
    return EmbedResult(vectors=check_shape(vectors, expected), prompt_tokens=tokens)


def parse_answer(body: bytes, expected: int, fast_from: int = FAST_FROM_BYTES) -> EmbedResult:
    """An answer already read whole: `AnswerReader`'s result for it as one chunk."""
    reader = AnswerReader(expected, fast_from)
    reader.feed(body)
    return reader.result()


class AnswerReader:
    """An answer fed a chunk at a time (`feed`), then read (`result`). An answer of at least `fast_from`
    bytes is cut and its rows decoded as the chunks come (`_Cutter`); a smaller one is decoded whole at
    the end, at no more cost than before there were chunks."""

    __slots__ = ("_chunks", "_cutter", "_expected", "_fast_from", "_size")

    def __init__(self, expected: int, fast_from: int = FAST_FROM_BYTES) -> None:
        self._expected = expected
        self._fast_from = fast_from
        self._chunks: list[bytes] = []  # the whole body, for `from_payload` when the fast read gives up
        self._size = 0
        self._cutter: _Cutter | None = None

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._cutter is not None:
            self._cutter.feed(chunk)
        elif self._size >= self._fast_from:
            self._cutter = _Cutter(self._expected)
            self._cutter.feed(b"".join(self._chunks))  # everything so far: one chunk in the usual case, no copy

    def result(self) -> EmbedResult:
        fast = self.fast_result() if self._cutter is not None else None
        return fast if fast is not None else from_payload(json_body(b"".join(self._chunks)), self._expected)

    def fast_result(self) -> EmbedResult | None:
        """The fast read of everything fed; None where it gave up (the answer is `from_payload`'s to read)."""
        cut = self._cutter.finish() if self._cutter is not None else None
        if cut is None:
            return None
        skeleton, vectors = cut
        if b"\\" in skeleton:  # an escape could hide a quote: the cut is sound only without any
            return None
        try:
            document = orjson.loads(skeleton)
        except orjson.JSONDecodeError:
            return None
        order = _row_order(document, self._expected, len(vectors))
        if order is None:
            return None
        if order != range(self._expected):
            in_order = np.empty_like(vectors)
            in_order[order] = vectors
            vectors = in_order
        # From here on, the same inputs as `from_payload`'s last steps: the same checks, the same errors.
        usage = document.get("usage")
        tokens = check_tokens(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
        return EmbedResult(vectors=check_shape(vectors, self._expected), prompt_tokens=tokens)


class _Cutter:
    """The rows cut out of an answer a chunk at a time and decoded as they come, and the skeleton left."""

    def __init__(self, expected: int) -> None:
        self._expected = expected
        self._failed = False
        self._pending = b""  # not yet cut: from where a key may begin that the last chunk cut short
        self._pieces: list[bytes] = []  # the skeleton so far
        self._vectors: Vectors | None = None  # rows in the order they came; allocated at the first
        self._rows = 0
        self._width = 0  # base64 characters of the first row, once cut

    def feed(self, chunk: bytes) -> None:
        if self._failed:
            return
        begin = 0
        if self._pending:
            # What the last chunk left open, most often a row's base64, is most often closed by this chunk's
            # first quote: only that far is joined to it (a few KB), not the whole chunk (256 KB a read).
            begin = chunk.find(b'"') + 1
            if begin:
                self._cut(self._pending + chunk[:begin], final=False)
            if self._pending and not self._failed:  # still open (a key cut short, a row longer than a chunk)
                self._cut(self._pending + chunk[begin:], final=False)
                return
        if not self._failed:
            self._cut(chunk, final=False, begin=begin)

    def finish(self) -> tuple[bytes, Vectors] | None:
        """The skeleton and the rows in the order they came; None where the cut gave up or found no row."""
        if not self._failed:
            self._cut(self._pending, final=True)
        if self._failed or not self._rows or self._vectors is None:
            return None
        return b"".join(self._pieces), self._vectors[:self._rows]

    def _cut(self, data: bytes, final: bool, begin: int = 0) -> None:
        """Cut every row that `data` holds whole from `begin` on, decode them, and keep what may begin a row
        still to come (all of it when `final` is false; at the body's end, a key or row left open gives up
        instead)."""
        last = begin  # the skeleton up to here is in `_pieces`
        spans: list[tuple[int, int]] = []
        # A row is looked for where a row as long as the first would end before it is searched for. A
        # quote there ends a span that is this row only if no quote comes earlier: decoding the span as
        # base64 (validated) refuses any quote in it, and then the fast read gives up.
        width = self._width
        found = _KEY_VALUE.search(data, begin)
        while found is not None:
            if self._rows + len(spans) == self._expected:
                self._give_up()
                return
            start = found.end()
            if found.group(1) is None:
                if start < len(data) or final:  # the value is no string (a float answer)
                    self._give_up()
                    return
                break  # whitespace up to the chunk's end: the value is yet to come
            end = start + width
            if end >= len(data) or data[end] != 0x22:  # not where a row as long as the first ends
                end = data.find(b'"', start)
            if end == -1:
                if final:
                    self._give_up()
                    return
                break  # the row goes on in the next chunk
            self._pieces.append(data[last:start])
            spans.append((start, end))
            last = end
            found = _KEY_VALUE.search(data, end + 1)
        keep = len(data) if final else _open_key(data, last + 1 if spans else begin, found)
        self._pieces.append(data[last:keep])
        self._pending = data[keep:]
        if spans and not self._decode(data, spans):
            self._give_up()

    def _decode(self, data: bytes, spans: Sequence[tuple[int, int]]) -> bool:
        """Decode the rows at `spans` into the next rows of `_vectors`; False when one is not base64 or
        they do not all decode to the same whole number of floats."""
        view = memoryview(data)
        try:
            if self._vectors is None:
                first, last = spans[0]
                size = len(pybase64.b64decode(view[first:last], validate=True))  # bytes per row
                if not size or size % 4:
                    return False
                self._vectors = np.empty((self._expected, size // 4), dtype="<f4")
                self._width = last - first
            vectors, at = self._vectors, self._rows
            size = vectors.shape[1] * 4
            width = size // 3 * 4  # base64 characters of an unpadded row
            if not size % 3 and all(end - start == width for start, end in spans):
                # Unpadded rows of one length: a stretch of them joined is one base64 string, decoded in
                # one call. Stretches, not all at once: a buffer of the whole would fault in fresh memory
                # every request, where a stretch's is reused.
                step = max(1, _STRETCH // width)
                for first in range(0, len(spans), step):
                    group = spans[first:first + step]
                    part = pybase64.b64decode(b"".join([view[start:end] for start, end in group]), validate=True)
                    if len(part) != size * len(group):  # padding inside: not one string
                        return False
                    vectors[at + first:at + first + len(group)] = np.frombuffer(part, dtype="<f4").reshape(
                        len(group), -1)
            else:
                flat = vectors.data.cast("B")
                for place, (start, end) in enumerate(spans, at):
                    row = pybase64.b64decode(view[start:end], validate=True)
                    if len(row) != size:
                        return False
                    flat[place * size:(place + 1) * size] = row
        except ValueError:  # binascii.Error: not base64 (a stray character, a control byte, misplaced padding)
            return False
        self._rows += len(spans)
        return True

    def _give_up(self) -> None:
        self._failed = True
        self._pieces.clear()
        self._pending = b""
        self._vectors = None


def _open_key(data: bytes, searched_from: int, found: re.Match[bytes] | None) -> int:
    """Where the next chunk's search must start again: at the key found but left open by the chunk's end,
    else at a key the end cut short (`"embedding"` and whitespace, or a part of the word); else the end.
    Nothing before that can begin a match: the search from `searched_from` found none."""
    if found is not None:
        return found.start()
    key = data.rfind(_KEY, searched_from)
    if key != -1 and not data[key + len(_KEY):].strip(_WHITESPACE):
        return key
    return max(searched_from, len(data) - len(_KEY) + 1)


def _row_order(document: Any, expected: int, cuts: int) -> list[int] | range | None:
    """Where each data item's row goes, when the skeleton is a well-formed answer of `expected` items
    whose `embedding`s are exactly the `cuts` emptied strings; else None. In order: a range."""
    items = document.get("data") if isinstance(document, dict) else None
    if not isinstance(items, list) or len(items) != expected or cuts != expected:
        return None
    order: list[int] = []
    taken = bytearray(expected)
    for position, item in enumerate(items):
        if not isinstance(item, dict) or item.get("embedding") != "":
            return None
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < expected or taken[index]:
            return None
        taken[index] = 1
        order.append(index)
    return range(expected) if order == list(range(expected)) else order
