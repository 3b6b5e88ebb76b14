"""A tiny synchronous client for the gateway's embeddings endpoint (stdlib only), and the
decoding of its answers back into float32 vectors."""

from __future__ import annotations

import base64
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-embedgate-cache")

    @property
    def vectors(self) -> list[np.ndarray]:
        """Every embedding in `index` order, as float32, whichever encoding it came in."""
        rows = sorted(self.json()["data"], key=lambda row: row["index"])
        return [decode_embedding(row["embedding"]) for row in rows]

    @property
    def prompt_tokens(self) -> int:
        return int(self.json()["usage"]["prompt_tokens"])


def decode_embedding(value: str | list[float]) -> np.ndarray:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float32)


def post_json(url: str, payload: Any, headers: Mapping[str, str] | None = None, timeout: float = 30) -> Reply:
    request = urllib.request.Request(
        url, data=orjson.dumps(payload), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.headers, err.read())


def embed(base_url: str, inputs: str | Sequence[str | Sequence[int]], model: str = "text-embedding-3-small",
          headers: Mapping[str, str] | None = None, **fields: Any) -> Reply:
    """POST /v1/embeddings; lists of token ids are sent as lists."""
    raw: Any = inputs if isinstance(inputs, str) else [x if isinstance(x, str) else list(x) for x in inputs]
    return post_json(f"{base_url}/v1/embeddings", {"model": model, "input": raw, **fields}, headers)


def embed_ok(base_url: str, inputs: str | Sequence[str | Sequence[int]], **kwargs: Any) -> Reply:
    reply = embed(base_url, inputs, **kwargs)
    assert reply.status == 200, reply.body
    return reply


def raw_request(base_url: str, method: str, path: str, headers: Sequence[bytes], body: bytes = b"") -> Reply:
    """One HTTP/1.1 request written byte by byte, for header bytes no client library would send."""
    where = urlsplit(base_url)
    head = [f"{method} {path} HTTP/1.1".encode(), f"Host: {where.netloc}".encode(), *headers,
            f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    with socket.create_connection((where.hostname, where.port or 80), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    raw_head, _, raw_body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    message = Message()
    for line in header_lines:
        name, _, value = line.partition(":")
        message[name.strip()] = value.strip()
    return Reply(int(status_line.split()[1]), message, raw_body)
