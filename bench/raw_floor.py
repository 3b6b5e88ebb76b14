"""The raw floor: the least any Python forwarder can cost, with no HTTP framework at all.

Two asyncio protocols on uvloop and nothing else: the client side reads a request's head and its
Content-Length body, hands the body to an idle keep-alive connection to the upstream (or a new one), and
writes the upstream's answer back with a head of its own. No tasks, no futures, no header objects, no
router: a callback from one socket's bytes to the other's. It understands only what the bench sends and
the fake upstream answers (HTTP/1.1, keep-alive, Content-Length bodies, one request at a time per
connection) and is no server for anything else.

`bench/baseline.py` is the floor on this project's stack (aiohttp on both sides); this one is the floor
under any stack a Python gateway could choose, measured the same way in the same run, so the bench shows
how much of what a gateway costs here is the framework's and how much is Python's and the kernel's.
Run as `python -m bench.raw_floor PORT UPSTREAM_API_BASE`.
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import AbstractContextManager
from urllib.parse import urlsplit

import uvloop

from bench.baseline import forwarder_process

_END = b"\r\n\r\n"


def _framed(buffer: bytearray) -> tuple[bytes, bytes] | None:
    """(head, body) of the first whole message in `buffer`, taken out of it; None until one is whole."""
    end = buffer.find(_END)
    if end < 0:
        return None
    head = bytes(buffer[:end])
    length = int(_header(head, b"content-length") or 0)
    start = end + len(_END)
    if len(buffer) < start + length:
        return None
    body = bytes(buffer[start:start + length])
    del buffer[:start + length]
    return head, body


def _header(head: bytes, name: bytes) -> bytes:
    at = head.lower().find(b"\r\n" + name + b":")
    if at < 0:
        return b""
    stop = head.find(b"\r\n", at + 2)
    return head[at + len(name) + 3:stop if stop > 0 else None].strip()


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream, carrying one request at a time."""

    def __init__(self, pool: list[_Upstream]) -> None:
        self.pool = pool
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.client: _Client | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, client: _Client, request: bytes) -> None:
        self.client = client
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        message = _framed(self.buffer)
        if message is None:
            return
        head, body = message
        client, self.client = self.client, None
        self.pool.append(self)
        if client is not None:
            client.answer(head[9:12], body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None:
            self.client.answer(b"502", b'{"error":{"message":"upstream closed"}}')


class _Client(asyncio.Protocol):
    """One client connection."""

    def __init__(self, upstreams: _Upstreams) -> None:
        self.upstreams = upstreams
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        message = _framed(self.buffer)
        if message is not None:
            head, body = message
            self.upstreams.forward(self, _header(head, b"authorization"), body)

    def answer(self, status: bytes, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 %s OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (status, len(body), body))


class _Upstreams:
    """The upstream: its address, and a pool of idle keep-alive connections to it."""

    def __init__(self, api_base: str) -> None:
        url = urlsplit(api_base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.head = (f"POST {url.path}/embeddings HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.idle: list[_Upstream] = []

    def forward(self, client: _Client, authorization: bytes, body: bytes) -> None:
        request = b"%sAuthorization: %s\r\nContent-Length: %d\r\n\r\n%s" % (self.head, authorization, len(body), body)
        if self.idle:
            self.idle.pop().send(client, request)
        else:
            asyncio.get_running_loop().create_task(self._connect(client, request))

    async def _connect(self, client: _Client, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: _Upstream(self.idle), self.host, self.port)
        upstream.send(client, request)


async def serve(port: int, api_base: str) -> None:
    upstreams = _Upstreams(api_base)
    server = await asyncio.get_running_loop().create_server(lambda: _Client(upstreams), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def raw_forwarder(upstream: str) -> AbstractContextManager[tuple[str, int]]:
    """The raw forwarder in its own process in front of `upstream`."""
    return forwarder_process("bench.raw_floor", upstream)


def main() -> None:
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))


if __name__ == "__main__":
    main()
