"""A TCP relay in front of a Redis that records what clients send through it, one entry per read.

Round trips counted where they reach the wire, whatever client made them (redis-py's pool or the
gateway's own connections, proxy/wire.py): a client that sends a batch in one write and waits for its
replies shows one entry per batch on loopback.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from testkit.servers import free_port

# A connection's own set-up and health checks, not the requests' commands.
_HOUSEKEEPING = (b"HELLO", b"CLIENT", b"PING", b"AUTH", b"SELECT")


def _first_command(packed: bytes) -> bytes:
    """`*N\r\n$len\r\nNAME\r\n...` → NAME."""
    parts = packed.split(b"\r\n", 3)
    return parts[2].upper() if len(parts) > 2 else b""


class CountingRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.sends: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="counting-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # each connection's handler and its two pipes

    def start(self) -> CountingRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        upstream = asyncio.ensure_future(self._pipe(client_reader, server_writer, record=True))
        downstream = asyncio.ensure_future(self._pipe(server_reader, client_writer, record=False))
        self._tasks |= {handler, upstream, downstream}
        try:
            await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for writer in (client_writer, server_writer):
                writer.close()
            self._tasks -= {handler, upstream, downstream}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool) -> None:
        while chunk := await reader.read(1 << 20):
            if record and _first_command(chunk) not in _HOUSEKEEPING:
                self.sends.append(chunk)
            writer.write(chunk)
            await writer.drain()

    def stop(self) -> None:
        async def close() -> Any:
            assert self._server is not None
            self._server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
