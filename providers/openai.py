"""OpenAI's embeddings API, and every server that speaks it (presets: Mistral, Jina, Together, Fireworks,
DeepInfra, TEI, vLLM, Ollama, infinity; Azure reuses the translation)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import orjson
import pybase64
from pydantic import Field, model_validator

from providers.base import (
    ANY_DIMENSIONS,
    Capabilities,
    EmbedBatch,
    EmbedResult,
    Vectors,
    bad_response,
    check_shape,
    check_tokens,
    stack_rows,
)
from providers.http import HttpClient, json_body
from providers.options import DeploymentOptions
from providers.presets import PRESETS
from providers.remote import RemoteProvider

DEFAULT_API_BASE = "https://api.openai.com/v1"
MAX_INPUTS = 2048
MAX_TOKENS = 300_000


class OpenAIOptions(DeploymentOptions):
    provider: Literal["openai"] = "openai"
    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    upstream_encoding: Literal["base64", "float"] = "base64"
    send_dimensions: bool = True  # the server takes OpenAI's `dimensions` parameter
    text_only: bool = False  # the server takes strings only: token ids are always decoded first
    # A server that reads query-vs-document from a body field of its own (Jina: `task`): that field, and
    # query/document in its words; any other value a client sends goes as it is.
    input_type_field: str | None = Field(None, min_length=1)
    input_types: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """The preset's values under the config's own: whatever the config sets wins."""
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return {**PRESETS[data["preset"]], **data}
        return data


def to_payload(batch: EmbedBatch, encoding_format: str, send_model: bool = True,
               input_type_field: str | None = None, input_types: Mapping[str, str] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "input": [x if isinstance(x, str) else list(x) for x in batch.inputs],
        "encoding_format": encoding_format,
    }
    if send_model:
        payload["model"] = batch.model
    if batch.dimensions is not None:
        payload["dimensions"] = batch.dimensions
    if input_type_field is not None and batch.input_type is not None:
        payload[input_type_field] = (input_types or {}).get(batch.input_type, batch.input_type)
    return payload


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


# The base64 fast path. A 2048 x 1536 base64 answer is 16 MB of JSON, nearly all of it the rows' base64
# strings: decoding it as JSON costs more than everything else the gateway does with it. So the rows are
# cut out where `"embedding"` is a key with a string value, the small rest (the skeleton) is decoded as
# JSON, and the rows' base64 goes straight into one float32 array. Why the cut is sound: the skeleton
# holds no backslash and every row only base64 characters (checked), so every `"` in the body delimits a
# string and each cut is the inside of one string, the value of an `embedding` key; nothing but base64 is
# taken out, so the body is valid JSON exactly when the skeleton is, and they decode to the same document
# but for those values. Every such value is cut (no escape can spell the key otherwise), so when the
# skeleton's n data items each show an emptied `embedding` and n cuts were made, the k-th cut is the k-th
# item's. Anything else goes through `from_payload`, the reference, for the same result or the same error.
_KEY = b'"embedding"'
_KEY_VALUE = re.compile(rb'"embedding"[ \t\n\r]*:[ \t\n\r]*(")?')  # JSON's whitespace, exactly
_STRETCH = 1 << 18  # bytes of base64 decoded per call


FAST_FROM_BYTES = 32 * 1024  # below this a plain decode is cheaper than the cut (measured on one 64-dim row)


def parse_answer(body: bytes, expected: int, fast_from: int = FAST_FROM_BYTES) -> EmbedResult:
    """An OpenAI-shaped answer's raw body, float or base64, as rows in input order: the same result (or
    the same error) as `from_payload` of the decoded body; a base64 answer of at least `fast_from` bytes
    without its full JSON decode."""
    fast = base64_answer(body, expected) if len(body) >= fast_from else None
    return fast if fast is not None else from_payload(json_body(body), expected)


def base64_answer(body: bytes, expected: int) -> EmbedResult | None:
    """The answer read the fast way; None wherever that is not certain to equal `from_payload`. Its
    errors past the rows (usage, NaN) are `from_payload`'s own, on the same values."""
    cut = _cut_rows(body, expected)
    if cut is None:
        return None
    skeleton, spans = cut
    if b"\\" in skeleton:  # an escape could hide a quote: the cut is sound only without any
        return None
    try:
        document = orjson.loads(skeleton)
    except orjson.JSONDecodeError:
        return None
    order = _row_order(document, expected, len(spans))
    vectors = _decode_rows(body, spans, order) if order is not None else None
    if vectors is None:
        return None
    # From here on, the same inputs as `from_payload`'s last steps: the same checks, the same errors.
    usage = document.get("usage")
    tokens = check_tokens(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    return EmbedResult(vectors=check_shape(vectors, expected), prompt_tokens=tokens)


def _cut_rows(body: bytes, expected: int) -> tuple[bytes, list[tuple[int, int]]] | None:
    """The body with every `"embedding": "<string>"` value emptied, and where each value was; None at
    the first `embedding` key whose value is not a string (a float answer), or past `expected` rows."""
    pieces: list[bytes] = []
    spans: list[tuple[int, int]] = []
    last = 0
    at = body.find(_KEY)
    while at != -1:
        found = _KEY_VALUE.match(body, at)
        if found is None:  # the word as a value ("object": "embedding"), not as a key
            at = body.find(_KEY, at + 1)
            continue
        start = found.end()
        end = body.find(b'"', start)
        if found.group(1) is None or end == -1 or len(spans) == expected:
            return None
        pieces.append(body[last:start])
        spans.append((start, end))
        last = end
        at = body.find(_KEY, end + 1)
    if not spans:
        return None
    pieces.append(body[last:])
    return b"".join(pieces), spans


def _row_order(document: Any, expected: int, cuts: int) -> list[int] | None:
    """Where each data item's row goes, when the skeleton is a well-formed answer of `expected` items
    whose `embedding`s are exactly the `cuts` emptied strings; else None."""
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
    return order


def _decode_rows(body: bytes, spans: Sequence[tuple[int, int]], order: Sequence[int]) -> Vectors | None:
    """The base64 rows at `spans`, decoded into their places (`order`) in one float32 [n, d] array; None
    when one is not base64 or the rows do not all decode to the same whole number of floats."""
    view = memoryview(body)
    first, last = spans[0]
    try:
        size = len(pybase64.b64decode(view[first:last], validate=True))  # bytes per row
        if not size or size % 4:
            return None
        vectors = np.empty((len(spans), size // 4), dtype="<f4")
        if size == (last - first) // 4 * 3 and all(end - start == last - first for start, end in spans):
            # Unpadded rows of one length: a stretch of them joined is one base64 string, decoded in one
            # call. Stretches, not all 16 MB at once: a buffer that size would fault in fresh memory
            # every request, where a stretch's is reused.
            step = max(1, _STRETCH // (last - first))
            for at in range(0, len(spans), step):
                part = pybase64.b64decode(b"".join([view[start:end] for start, end in spans[at:at + step]]),
                                          validate=True)
                if len(part) != size * len(spans[at:at + step]):  # padding inside: not one string
                    return None
                vectors[order[at:at + step]] = np.frombuffer(part, dtype="<f4").reshape(-1, size // 4)
        else:
            flat = vectors.data.cast("B")
            for (start, end), place in zip(spans, order, strict=True):
                row = pybase64.b64decode(view[start:end], validate=True)
                if len(row) != size:
                    return None
                flat[place * size:(place + 1) * size] = row
    except ValueError:  # binascii.Error: not base64 (a stray character, a control byte, misplaced padding)
        return None
    return vectors


class OpenAIProvider(RemoteProvider):
    options: OpenAIOptions

    def __init__(self, options: OpenAIOptions, http: HttpClient) -> None:
        key = options.secret()
        super().__init__(options, http, {"Authorization": f"Bearer {key}"} if key else None)
        self._url = (options.api_base or DEFAULT_API_BASE).rstrip("/") + "/embeddings"

    def capabilities(self, model: str) -> Capabilities:
        inputs, tokens = self.options.batch_caps(MAX_INPUTS, MAX_TOKENS)
        return Capabilities(
            max_inputs=inputs, max_tokens=tokens,
            dimensions=ANY_DIMENSIONS if self.options.send_dimensions else None,
            input_type=self.options.input_type_field is not None,
            token_ids=not self.options.text_only and self.options.passes_token_ids(model),
        )

    async def embed(self, batch: EmbedBatch) -> EmbedResult:
        options = self.options
        payload = to_payload(batch, options.upstream_encoding, input_type_field=options.input_type_field,
                             input_types=options.input_types)
        return parse_answer(await self.post_bytes(self._url, payload), len(batch.inputs))
