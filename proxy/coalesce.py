"""Commands sent in one turn of the event loop go to Redis together, in one pipeline.

A production request reads its key, charges its quota and reads the cache: three commands that need
nothing of each other, sent from three places in the same turn of the loop. redis-py's CPU for a command
is most of its cost here (a pool checkout, a write, a read, per command), so three separate commands
cost about twice what one pipeline of the same three does. This module gathers what the callers send
in one turn and sends it as one pipeline (not a transaction: nothing here needs atomicity across
commands) at the end of that turn; each caller gets its own reply, or its own error.

Only for one Redis (standalone, Sentinel, `memory://`): a cluster's commands go to their nodes as they
come, since a pipeline there is split by slot anyway. Where the store is one plain Redis, the batches go
out on the request path's own connection (proxy/wire.py) instead of through redis-py's pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.wire import Command, Wire


class Coalescer:
    def __init__(self, client: Callable[[], Any], wire: Callable[[], Wire | None] = lambda: None,
                 enabled: bool = True) -> None:
        """`client`: the store's current client (a test may swap it); `wire`: the request path's connection
        to it, where it has one."""
        self._client = client
        self._wire = wire
        self._enabled = enabled
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # held, so a pipeline under way is never collected

    async def call(self, *command: Any) -> Any:
        """What `client.execute_command(*command)` would answer, sent with the turn's other commands. A
        reply that is an error (NOSCRIPT, WRONGTYPE) is raised to its caller alone; a failure of the
        pipeline itself (connection, timeout) to every caller in it."""
        if not self._enabled:
            return await self._client().execute_command(*command)
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((command, reply))
        return await reply

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(queue), name="embedgate-store-batch")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, queue: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._replies([command for command, _ in queue])
        except BaseException as err:
            for _, future in queue:
                if not future.done():
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        for (_, future), reply in zip(queue, replies, strict=True):
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, Exception):  # an error reply, or a command that failed on its own
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _replies(self, commands: list[Command]) -> list[Any]:
        """Each command's reply or error reply, in order; raises what failed them all."""
        wire = self._wire()
        if wire is not None:
            return await wire.send(commands)
        client = self._client()
        if len(commands) == 1:  # alone in its turn: a plain command costs less than a pipeline of one
            return [await _reply_or_error(client.execute_command(*commands[0]))]
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            return list(await pipe.execute(raise_on_error=False))
        except (RedisConnectionError, RedisTimeoutError):
            # A pooled connection that died (Redis restarted, failed over): redis-py sends a single command
            # again on a fresh one, but not a pipeline. Each command goes again on its own, as it would have
            # had it not been batched.
            return list(await asyncio.gather(*(client.execute_command(*command) for command in commands),
                                             return_exceptions=True))


async def _reply_or_error(pending: Any) -> Any:
    """One command's reply, with an error reply returned rather than raised, as a pipeline returns it."""
    try:
        return await pending
    except ResponseError as err:
        return err
