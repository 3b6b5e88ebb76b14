"""Response bodies: orjson for floats, base64 straight from the float32 buffer."""

from __future__ import annotations

import numpy as np
import orjson
import pybase64

from providers.base import Vectors


def embeddings_body(vectors: Vectors, *, model: str, encoding_format: str, prompt_tokens: int) -> bytes:
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        encode = pybase64.b64encode_as_string
        data: list[dict[str, object]] = [
            {"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(rows)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return orjson.dumps(
        {"object": "list", "data": data, "model": model,
         "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
