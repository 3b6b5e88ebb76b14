"""Batch API helpers for end-to-end tests: input files, polling a batch, reading and checking its output."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import openai
import orjson
from openai.types import Batch

from testkit.openai_upstream import expected_vector
from tests.support.http import decode_embedding
from tests.support.waiting import wait_until

MODEL = "text-embedding-3-small"


def line(custom_id: str, text: Any, model: str = MODEL, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": model, "input": text, **body}}


def jsonl(items: Iterable[dict[str, Any] | bytes]) -> bytes:
    return b"".join((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in items)


def text_lines(count: int, prefix: str = "row") -> list[dict[str, Any]]:
    return [line(f"{prefix}-{i}", f"{prefix} text number {i}") for i in range(count)]


def start_batch(client: openai.OpenAI, items: Iterable[dict[str, Any] | bytes]) -> Batch:
    uploaded = client.files.create(file=("input.jsonl", jsonl(items), "application/jsonl"), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")


def wait_batch(client: openai.OpenAI, batch_id: str, until: Callable[[Batch], bool],
               timeout: float = 60) -> Batch:
    seen: list[Batch] = []

    def reached() -> bool:
        seen.append(client.batches.retrieve(batch_id))
        return until(seen[-1])

    wait_until(reached, timeout, last=lambda: (seen[-1].status, seen[-1].request_counts) if seen else None)
    return seen[-1]


def finished(batch: Batch) -> bool:
    return batch.status in ("completed", "failed", "expired", "cancelled")


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(raw) for raw in client.files.content(file_id).content.splitlines()]


def check_output(lines: list[dict[str, Any]], inputs: dict[str, Any], dims: dict[str, int] | None = None) -> None:
    """Every output line answers its custom_id's input with the fake upstream's vector, each id once."""
    ids = [item["custom_id"] for item in lines]
    assert len(ids) == len(set(ids)), "a custom_id is in the output twice"
    for item in lines:
        assert item["error"] is None and item["id"].startswith("batch_req_")
        response = item["response"]
        assert response["status_code"] == 200 and response["request_id"]
        body = response["body"]
        texts = inputs[item["custom_id"]]
        texts = texts if isinstance(texts, list) and texts and not isinstance(texts[0], int) else [texts]
        assert [row["index"] for row in body["data"]] == list(range(len(texts)))
        for row, text in zip(body["data"], texts, strict=True):
            want = expected_vector(text, (dims or {}).get(item["custom_id"]))
            np.testing.assert_allclose(decode_embedding(row["embedding"]), want, atol=1e-6)
