"""Response bodies: orjson for floats, base64 straight from the float32 buffer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pybase64

from providers.base import Vectors


def embeddings_body(vectors: Vectors, *, model: str, encoding_format: str, prompt_tokens: int) -> bytes:
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        return _base64_body(rows, model, prompt_tokens)
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return orjson.dumps(
        {"object": "list", "data": data, "model": model,
         "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _base64_body(rows: Vectors, model: str, prompt_tokens: int) -> bytes:
    """The bytes orjson would write for the base64 answer, joined from pieces instead: orjson grows one
    buffer by reallocation up to 16 MB on the largest answer, which faults in fresh memory when other
    large buffers come and go around it; pieces are copied once, into the body."""
    parts: list[bytes | memoryview] = [b'{"object":"list","data":[']
    for index, encoded in enumerate(_encoded_rows(rows)):
        parts += (b'{"object":"embedding","index":%d,"embedding":"' % index, encoded, b'"},')
    if len(rows):
        parts[-1] = b'"}'  # no comma after the last item
    # The model name as orjson writes any string (its escaping), so the body stays what orjson would make.
    parts.append(b'],"model":%b,"usage":{"prompt_tokens":%d,"total_tokens":%d}}'
                 % (orjson.dumps(model), prompt_tokens, prompt_tokens))
    return b"".join(parts)


def _encoded_rows(rows: Vectors) -> Sequence[bytes | memoryview]:
    """Each row's base64. A row of a whole number of 3-byte groups (dimensions a multiple of 3: 1536, 3072,
    768...) ends on a group, so every row's base64 is its own slice of the matrix's: one call encodes them
    all (2048 x 1536: 0.7 ms against 2.2 ms row by row)."""
    row_bytes = rows.shape[1] * 4
    if row_bytes % 3 or not row_bytes:
        return [pybase64.b64encode(row) for row in rows]
    width = row_bytes // 3 * 4
    encoded = memoryview(pybase64.b64encode(rows.data))  # rows: C-contiguous (embeddings_body)
    return [encoded[at:at + width] for at in range(0, len(encoded), width)]
