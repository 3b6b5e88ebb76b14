"""proxy/wire.py: the store's own connection to one Redis, on a real redis-server."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.settings import StoreSettings
from proxy.store import STORE_ERRORS, Store, connect
from proxy.wire import Address, Wire
from testkit.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer
from testkit.servers import free_port

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS_REASON)


def on(url: str, body: Callable[[Wire], Awaitable[None]], timeout: float = 5.0) -> None:
    """`body` with a wire to the Redis at `url`, as the store builds it."""
    async def main() -> None:
        client = aredis.Redis.from_url(url, socket_timeout=timeout)
        wire = Wire.for_client(client)
        assert wire is not None
        try:
            await body(wire)
        finally:
            wire.close()
            await client.aclose()
    asyncio.run(main())


def fresh() -> str:
    return f"wire:{secrets.token_hex(4)}"


def test_each_batch_gets_its_own_replies_in_order_as_redis_py_reads_them(redis_server: RedisServer) -> None:
    async def body(wire: Wire) -> None:
        keys = [fresh() for _ in range(50)]
        sets = await asyncio.gather(*(wire.send([("SET", key, f"v{i}")]) for i, key in enumerate(keys)))
        assert sets == [[True]] * 50  # redis-py's callback for SET: True, not b"OK"
        assert await wire.send([]) == []  # nothing to wait for
        gets = await asyncio.gather(*(wire.send([("GET", key), ("STRLEN", key), ("GET", "missing")])
                                      for key in keys))
        assert gets == [[f"v{i}".encode(), len(f"v{i}"), None] for i in range(50)]
    on(redis_server.url, body)


def test_an_error_reply_is_its_commands_alone_and_of_redis_pys_class(redis_server: RedisServer) -> None:
    async def body(wire: Wire) -> None:
        key = fresh()
        missing, wrong, ok = await wire.send([("EVALSHA", "0" * 40, 0), ("HGET", key, "f"), ("SET", key, "x")])
        assert isinstance(missing, NoScriptError)  # what the quota module catches to load its script
        assert ok is True and wrong is None
        wrongtype, value = await wire.send([("HGET", key, "f"), ("GET", key)])
        assert isinstance(wrongtype, ResponseError) and "WRONGTYPE" in str(wrongtype)
        assert value == b"x"
    on(redis_server.url, body)


def test_a_transaction_runs_whole_and_one_redis_refuses_raises(redis_server: RedisServer) -> None:
    async def body(wire: Wire) -> None:
        key = fresh()
        assert await wire.transaction([("INCR", key), ("INCRBY", key, 5), ("EXPIRE", key, 60)]) == [1, 6, 1]
        with pytest.raises(ExecAbortError):
            await wire.transaction([("INCR", key), ("NOSUCHCOMMAND",)])
        assert await wire.send([("GET", key)]) == [b"6"]  # the refused one ran nothing
    on(redis_server.url, body)


def test_a_caller_that_gives_up_leaves_the_replies_behind_it_to_theirs(redis_server: RedisServer) -> None:
    async def body(wire: Wire) -> None:
        first, second = fresh(), fresh()
        await wire.send([("SET", first, "1"), ("SET", second, "2")])
        gave_up = asyncio.ensure_future(wire.send([("GET", first)]))
        await asyncio.sleep(0)  # written
        gave_up.cancel()
        assert await wire.send([("GET", second)]) == [b"2"]
    on(redis_server.url, body)


def test_password_and_database_come_from_the_clients_url() -> None:
    server = RedisServer().start()
    admin = server.client()
    admin.config_set("requirepass", "s3cret")  # after start: its readiness check pings without one
    admin.close()
    try:
        async def body(wire: Wire) -> None:
            assert wire.address.password == "s3cret" and wire.address.db == 3
            assert await wire.send([("SET", "in-three", "yes")]) == [True]
        on(f"redis://:s3cret@127.0.0.1:{server.port}/3", body)
        check = redis.Redis(port=server.port, password="s3cret", db=3)
        assert check.get("in-three") == b"yes"
        check.close()

        async def refused(wire: Wire) -> None:
            with pytest.raises(RedisConnectionError):  # redis-py's AuthenticationError is one
                await wire.send([("GET", "in-three")])
        on(f"redis://:wrong@127.0.0.1:{server.port}/3", refused)
    finally:
        server.stop()


def test_a_late_reply_times_out_and_the_next_batch_goes_on_a_fresh_connection(redis_server: RedisServer) -> None:
    admin = redis_server.client()

    async def body(wire: Wire) -> None:
        key = fresh()
        await wire.send([("SET", key, "before")])
        admin.execute_command("CLIENT", "PAUSE", 800, "ALL")
        with pytest.raises(RedisTimeoutError):
            await wire.send([("GET", key)])
        await asyncio.sleep(0.9)
        assert await wire.send([("GET", key)]) == [b"before"]
    try:
        on(redis_server.url, body, timeout=0.3)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()


def test_a_connection_redis_dropped_under_a_batch_sends_it_once_more_on_a_fresh_one(
        redis_server: RedisServer) -> None:
    admin = redis_server.client()

    async def body(wire: Wire) -> None:
        key = fresh()
        assert await wire.send([("GET", key)]) == [None]  # connected
        # Killed while this process is not looking: the batch below is written on the dead socket.
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        assert await wire.send([("INCR", key)]) == [1]
        assert await wire.send([("INCR", key)]) == [2]  # ran once each: never twice for one send
    try:
        on(redis_server.url, body)
    finally:
        admin.close()


def test_a_redis_that_cannot_be_reached_is_a_store_error() -> None:
    async def body(wire: Wire) -> None:
        with pytest.raises(RedisConnectionError) as failed:
            await wire.send([("GET", "x")])
        assert isinstance(failed.value, STORE_ERRORS)
    on(f"redis://127.0.0.1:{free_port()}/0", body)


def test_only_a_plain_redis_gets_a_wire(redis_server: RedisServer, tmp_path: Path) -> None:
    class Subclassed(aredis.Connection):
        pass

    plain = Wire.for_client(aredis.Redis.from_url("redis://user:pw@10.0.0.1:6390/2", socket_timeout=1.5))
    assert plain is not None
    assert plain.address == Address(host="10.0.0.1", port=6390, username="user", password="pw", db=2, timeout=1.5)
    socket = Wire.for_client(aredis.Redis.from_url(f"unix://{tmp_path}/redis.sock?db=1"))
    assert socket is not None and socket.address.path == f"{tmp_path}/redis.sock" and socket.address.db == 1
    for other in (aredis.Redis.from_url("rediss://10.0.0.1:6390/0"),  # TLS: redis-py's path
                  aredis.Redis.from_url("redis://10.0.0.1:6390/0", connection_class=Subclassed),
                  aredis.Redis.from_url("redis://10.0.0.1:6390/0", protocol=3),
                  connect(StoreSettings(url="memory://")),
                  connect(StoreSettings(url="redis+sentinel://127.0.0.1:26379/mymaster"))):
        assert Wire.for_client(other) is None, other
    assert Store(StoreSettings(url=redis_server.url)).wire is not None
    assert Store(StoreSettings(url="memory://")).wire is None


class CountedWrites:
    """Stands in front of the wire's real transport and counts its writes (a relay cannot: a reader on
    loopback sees two quick writes as one chunk)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def test_the_batches_of_one_loop_turn_leave_in_one_write(redis_server: RedisServer) -> None:
    async def body(wire: Wire) -> None:
        key = fresh()
        await wire.send([("GET", key)])  # connected
        counted = wire._resp._transport = CountedWrites(wire._resp._transport)  # type: ignore[union-attr]
        first, second = await asyncio.gather(wire.send([("SET", key, "1")]), wire.send([("GET", key), ("GET", key)]))
        assert (first, second) == ([True], [b"1", b"1"])
        assert await wire.send([("GET", key)]) == [b"1"]  # a later turn: a write of its own
        assert [sent.count(b"\r\nSET\r\n") + sent.count(b"\r\nGET\r\n") for sent in counted.writes] == [3, 1]
    on(redis_server.url, body)


def test_a_closed_wire_opens_no_connection_again(redis_server: RedisServer) -> None:
    """The store closes its wires at shutdown; a write still on its way then fails rather than leaving a
    connection nobody closes."""
    admin = redis_server.client()

    def named() -> bool:
        return any(c["name"] == "closing-wire" for c in admin.client_list())

    async def body(wire: Wire) -> None:
        await wire.send([("CLIENT", "SETNAME", "closing-wire")])
        assert named()
        wire.close()
        with pytest.raises(RedisConnectionError, match="closed"):
            await wire.send([("GET", fresh())])
        await asyncio.sleep(0.05)
        assert not named()
    try:
        on(redis_server.url, body)
    finally:
        admin.close()
