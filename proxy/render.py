"""Response bodies: orjson for floats, base64 straight from the float32 buffer.

A large answer (`PIECES_FROM` values and up: 2048 x 1536 is 16 MB of base64, 40 MB of floats) is rendered
a piece at a time as the HTTP layer writes it (`Pieces`), not whole before the first byte leaves: the client
reads one piece while the next is rendered, and no buffer of the whole body is faulted in per request.
Joined, the pieces are byte for byte the body rendered whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pybase64

from providers.base import Vectors

PIECES_FROM = 1 << 18  # values (1 MB of float32); below, one body
PIECE_VALUES = 1 << 18  # values per piece: about 1.3 MB of base64, 3 MB of float text
_ITEM = b'{"object":"embedding","index":%d,"embedding":"'


@dataclass(frozen=True)
class Pieces:
    """A body rendered as it is iterated. `length`: its size in bytes, where known before (base64)."""

    length: int | None
    parts: Iterator[bytes | memoryview]

    def joined(self) -> bytes:
        return b"".join(self.parts)


def embeddings_answer(vectors: Vectors, *, model: str, encoding_format: str,
                      prompt_tokens: int) -> bytes | Pieces:
    """The body of `POST /v1/embeddings`: whole, or in pieces when large."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    if rows.size < PIECES_FROM:
        return _body(rows, model, encoding_format, prompt_tokens)
    tail = _tail(model, prompt_tokens)
    if encoding_format == "base64":
        return Pieces(_base64_length(rows, tail), _base64_pieces(rows, tail))
    return Pieces(None, _float_pieces(rows, tail))


def embeddings_body(vectors: Vectors, *, model: str, encoding_format: str, prompt_tokens: int) -> bytes:
    """The body whole, whatever its size."""
    return _body(np.ascontiguousarray(vectors, dtype="<f4"), model, encoding_format, prompt_tokens)


def _body(rows: Vectors, model: str, encoding_format: str, prompt_tokens: int) -> bytes:
    if encoding_format == "base64":
        return _base64_body(rows, _tail(model, prompt_tokens))
    return orjson.dumps(
        {"object": "list", "data": _float_items(rows, 0), "model": model,
         "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


_HEAD = b'{"object":"list","data":['


def _tail(model: str, prompt_tokens: int) -> bytes:
    # The model name as orjson writes any string (its escaping), so the body stays what orjson would make.
    return b'],"model":%b,"usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (
        orjson.dumps(model), prompt_tokens, prompt_tokens)


def _base64_body(rows: Vectors, tail: bytes) -> bytes:
    """The bytes orjson would write for the base64 answer, joined from pieces instead: orjson grows one
    buffer by reallocation, which faults in fresh memory when other large buffers come and go around
    it; pieces are copied once, into the body."""
    parts: list[bytes | memoryview] = [_HEAD]
    parts += _base64_items(rows, 0, last=True)
    parts.append(tail)
    return b"".join(parts)


def _base64_items(rows: Vectors, first: int, last: bool) -> list[bytes | memoryview]:
    """The data items of `rows`, numbered from `first`, comma-separated (and after the last too, unless
    `last`), as the pieces to join."""
    parts: list[bytes | memoryview] = []
    for index, encoded in enumerate(_encoded_rows(rows), first):
        parts += (_ITEM % index, encoded, b'"},')
    if last and parts:
        parts[-1] = b'"}'  # no comma after the last item
    return parts


def _encoded_rows(rows: Vectors) -> Sequence[bytes | memoryview]:
    """Each row's base64. A row of a whole number of 3-byte groups (dimensions a multiple of 3: 1536, 3072,
    768...) ends on a group, so every row's base64 is its own slice of the matrix's: one call encodes them
    all (2048 x 1536: 0.7 ms against 2.2 ms row by row)."""
    row_bytes = rows.shape[1] * 4
    if row_bytes % 3 or not row_bytes:
        return [pybase64.b64encode(row) for row in rows]
    width = row_bytes // 3 * 4
    encoded = memoryview(pybase64.b64encode(rows.data))  # rows: C-contiguous
    return [encoded[at:at + width] for at in range(0, len(encoded), width)]


def _float_items(rows: Vectors, first: int) -> list[dict[str, object]]:
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows, first)]


def _groups(rows: Vectors) -> Iterator[tuple[int, Vectors]]:
    step = max(1, PIECE_VALUES // max(1, rows.shape[1]))
    for first in range(0, len(rows), step):
        yield first, rows[first:first + step]


def _base64_pieces(rows: Vectors, tail: bytes) -> Iterator[bytes | memoryview]:
    yield _HEAD
    for first, group in _groups(rows):
        yield b"".join(_base64_items(group, first, last=first + len(group) == len(rows)))
    yield tail


def _base64_length(rows: Vectors, tail: bytes) -> int:
    """The base64 body's size before it is rendered (for Content-Length)."""
    count, row_bytes = int(rows.shape[0]), int(rows.shape[1]) * 4
    encoded = (row_bytes + 2) // 3 * 4
    items = count * (len(_ITEM % 0) - 1 + encoded + len(b'"},')) + _digits_below(count)
    return len(_HEAD) + items - (1 if count else 0) + len(tail)


def _digits_below(count: int) -> int:
    """Digits in writing 0, 1, ... count - 1."""
    total, low, high, width = 0, 0, 10, 1
    while low < count:
        total += (min(count, high) - low) * width
        low, high, width = high, high * 10, width + 1
    return total


def _float_pieces(rows: Vectors, tail: bytes) -> Iterator[bytes | memoryview]:
    yield _HEAD
    for first, group in _groups(rows):
        items = orjson.dumps(_float_items(group, first), option=orjson.OPT_SERIALIZE_NUMPY)
        yield memoryview(items)[1:-1]  # without the list's brackets
        if first + len(group) < len(rows):
            yield b","
    yield tail
