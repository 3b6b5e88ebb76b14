"""Response bodies: orjson for floats, base64 straight from the float32 buffer."""

from __future__ import annotations

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
    large buffers come and go around it; row-sized pieces reuse what the last row freed."""
    encode = pybase64.b64encode
    parts = [b'{"object":"list","data":[']
    for index, row in enumerate(rows):
        parts += (b'{"object":"embedding","index":%d,"embedding":"' % index, encode(row), b'"},')
    if len(rows):
        parts[-1] = b'"}'  # no comma after the last item
    # The model name as orjson writes any string (its escaping), so the body stays what orjson would make.
    parts.append(b'],"model":%b,"usage":{"prompt_tokens":%d,"total_tokens":%d}}'
                 % (orjson.dumps(model), prompt_tokens, prompt_tokens))
    return b"".join(parts)
