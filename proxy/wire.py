"""One connection to one Redis for the request path: batches written as they come, replies matched in order.

redis-py spends most of a command's CPU outside the socket: a pool checkout and release, a retry wrapper,
a timeout context per reply, observability hooks, response callbacks. The request path's commands (the key
read, the quota script, the cache read and write) need none of it: this module writes each batch of
commands on one long-lived connection (RESP2, packed and parsed by hiredis, as redis-py's own fast
parser), and the replies come back in the order the commands went out, so each batch takes the next
replies as they arrive. Batches do not wait for each other: many are in flight on the one connection, as
in a pipeline.

It speaks to one plain Redis over TCP or a Unix socket, with a password and a database. Anything else
(TLS, Sentinel, a cluster, fakeredis, a custom connection class) has no `Wire` and keeps redis-py's path
(`Wire.for_client` answers None).

Failures read as redis-py's: a connection that cannot be made or is lost is a `ConnectionError` for every
batch waiting on it, a reply later than the store's timeout a `TimeoutError` (and the connection is closed,
since its replies can no longer be matched); error replies are redis-py's classes (NOSCRIPT is
`NoScriptError`). The next batch opens a fresh connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]

_MORE = object()  # hiredis: no whole reply buffered yet
_CLOSED = "the store's connection is closed"


class ConnectionLost(RedisConnectionError):
    """The connection closed under batches already written (Redis restarted, or closed an idle client)."""


@dataclass(frozen=True)
class Address:
    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a Unix socket instead of host and port
    username: str | None = None
    password: str | None = None
    db: int = 0
    timeout: float | None = None  # per reply, and for the connect

    def describe(self) -> str:
        return self.path or f"{self.host}:{self.port}"


class _Batch:
    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future, self.count, self.deadline = future, count, deadline
        self.replies: list[Any] = []


class _Resp(asyncio.Protocol):
    """The connection: writes packed batches, feeds what arrives to hiredis, hands each batch its replies."""

    def __init__(self, address: Address) -> None:
        self._address = address
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error,
                                      notEnoughData=_MORE)
        self._pending: deque[_Batch] = deque()
        self._transport: asyncio.Transport | None = None
        self._unwritten: list[bytes] = []  # packed commands of this loop turn, written at its end
        self._timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def send(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queued for the end of this loop turn: the batches of one turn leave in one write. A write to a
        socket on loopback costs tens of µs of system time, more than the rest of a batch's handling."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not self._unwritten:
            self._loop.call_soon(self._write)
        self._unwritten += [hiredis.pack_command(command) for command in commands]
        timeout = self._address.timeout
        self._pending.append(_Batch(future, len(commands), self._loop.time() + (timeout or 0.0)))
        if timeout and self._timer is None:
            self._timer = self._loop.call_later(timeout, self._expire)
        return future

    def _write(self) -> None:
        unwritten, self._unwritten = self._unwritten, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(unwritten))  # else the batches have failed already (close)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while (reply := self._reader.gets()) is not _MORE:
            if not pending:  # a reply nobody asked for: the stream can no longer be trusted
                self.close(RedisConnectionError(f"unexpected reply from {self._address.describe()}"))
                return
            batch = pending[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.count:
                pending.popleft()
                if not batch.future.done():  # its caller may have given up
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(ConnectionLost(f"connection to {self._address.describe()} lost" + (f": {exc}" if exc else "")))

    def _expire(self) -> None:
        """A reply later than the timeout fails its batch and every batch behind it: their replies cannot be
        told apart from the late one's any more, so the connection goes too."""
        self._timer = None
        if not self._pending:
            return
        head = self._pending[0].deadline
        if head <= self._loop.time():
            self.close(RedisTimeoutError(f"Timeout reading from {self._address.describe()}"))
        else:
            self._timer = self._loop.call_at(head, self._expire)

    def close(self, err: Exception) -> None:
        """Every batch waiting fails with `err`, and the connection is dropped."""
        pending, self._pending = self._pending, deque()
        for batch in pending:
            if not batch.future.done():
                batch.future.set_exception(err)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()


class Wire:
    """The request path's connection to one Redis, opened on first use and again after it is lost."""

    def __init__(self, address: Address, callbacks: Mapping[str, Callable[[Any], Any]] | None = None) -> None:
        """`callbacks`: redis-py's response callbacks, by command name, so a reply reads as the client's
        `execute_command` answers it (SET's b"OK" is True) and callers see the same on every store."""
        self.address = address
        self.callbacks = callbacks or {}
        self._known: dict[str, Callable[[Any], Any] | None] = {}  # the callbacks looked up so far
        self._resp: _Resp | None = None
        self._connecting: asyncio.Future[_Resp] | None = None
        self._closed = False

    @classmethod
    def for_client(cls, client: Any) -> Wire | None:
        """A wire to the Redis that redis-py `client` talks to, or None where redis-py must keep the path
        (see the module's docstring)."""
        pool = getattr(client, "connection_pool", None)
        kind = getattr(pool, "connection_class", None)
        if kind not in (Connection, UnixDomainSocketConnection):  # exact: a subclass may add anything
            return None
        kwargs: dict[str, Any] = pool.connection_kwargs  # type: ignore[union-attr]
        if kwargs.get("credential_provider") is not None or kwargs.get("protocol") not in (None, 2, "2"):
            return None
        return cls(Address(host=kwargs.get("host", "localhost"), port=int(kwargs.get("port", 6379)),
                           path=kwargs.get("path"), username=kwargs.get("username"),
                           password=kwargs.get("password"), db=int(kwargs.get("db") or 0),
                           timeout=kwargs.get("socket_timeout")),
                   getattr(client, "response_callbacks", None))

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        """Each command's reply, in order; an error reply is returned as its exception, not raised. A lost
        connection or a late reply raises (redis-py's ConnectionError / TimeoutError)."""
        if not commands:  # no reply would ever come for it
            return []
        try:
            replies = await self._send(commands)
        except ConnectionLost:
            # Written on a connection that died under it (Redis restarted, or dropped an idle client): once
            # more, on a fresh one, as redis-py does for a command on a dead pooled connection.
            replies = await self._send(commands)
        return [self._as_client_would(command[0], reply) for command, reply in zip(commands, replies, strict=True)]

    async def transaction(self, commands: Sequence[Command]) -> list[Any]:
        """`commands` in MULTI ... EXEC, in one write: EXEC's replies. A command Redis refused to queue
        fails the whole (EXECABORT), raised."""
        replies = await self.send([("MULTI",), *commands, ("EXEC",)])
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        return list(replies[-1])

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        resp = self._resp
        if resp is None or not resp.open:
            if self._closed:  # the store shut down: a late write must not open a connection nobody closes
                raise RedisConnectionError(_CLOSED)
            resp = await self._connect()
        return await resp.send(commands)

    def _as_client_would(self, name: str, reply: Any) -> Any:
        if isinstance(reply, Exception):
            return reply
        callback = self._known.get(name, _MORE)
        if callback is _MORE:
            callback = self._known[name] = self.callbacks.get(name)
        return reply if callback is None else callback(reply)  # type: ignore[operator]

    async def _connect(self) -> _Resp:
        """One connect at a time: batches sent meanwhile wait for it rather than opening their own. Shielded:
        a caller that gives up does not abort the connect the others wait on."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Resp:
        loop = asyncio.get_running_loop()
        address = self.address
        resp: _Resp | None = None
        try:
            async with asyncio.timeout(address.timeout):
                if address.path:
                    _, resp = await loop.create_unix_connection(lambda: _Resp(address), address.path)
                else:
                    _, resp = await loop.create_connection(lambda: _Resp(address), address.host, address.port)
                handshake: list[Command] = []
                if address.password is not None:
                    handshake.append(("AUTH", *([address.username] if address.username else []),
                                      address.password))
                if address.db:
                    handshake.append(("SELECT", address.db))
                for reply in await resp.send(handshake) if handshake else ():
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException as err:
            if resp is not None:
                resp.close(RedisConnectionError("handshake failed"))
            if isinstance(err, OSError | asyncio.TimeoutError):
                raise RedisConnectionError(f"Error connecting to {address.describe()}: {err}") from err
            raise
        if self._closed:  # closed while this connect was under way
            resp.close(RedisConnectionError(_CLOSED))
            raise RedisConnectionError(_CLOSED)
        self._resp = resp
        return resp

    def close(self) -> None:
        self._closed = True
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close(RedisConnectionError(_CLOSED))
