"""proxy/coalesce.py: the commands of one loop turn in one pipeline, each caller with its own reply or error."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from redis.exceptions import ResponseError

from proxy.settings import StoreSettings
from proxy.store import STORE_ERRORS, Store
from testkit.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer


class Sent:
    """Wraps the store's client to record what went out: single commands and pipelines of commands."""

    def __init__(self, store: Store) -> None:
        self.client = store.client
        self.batches: list[list[str]] = []
        store.client = self

    async def execute_command(self, *command: Any) -> Any:
        self.batches.append([str(command[0])])
        return await self.client.execute_command(*command)

    async def aclose(self) -> None:
        await self.client.aclose()

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.client.pipeline(transaction=transaction)
        send, names = pipe.execute_command, []

        def queue(*command: Any) -> Any:
            names.append(str(command[0]))
            return send(*command)

        pipe.execute_command = queue
        self.batches.append(names)
        return pipe


@pytest.fixture(params=["memory", "redis"])
def one_redis(request: pytest.FixtureRequest) -> StoreSettings:
    """fakeredis and a real Redis, each test under a fresh prefix."""
    prefix = f"co{secrets.token_hex(4)}"
    if request.param == "memory":
        return StoreSettings(url="memory://", prefix=prefix)
    return StoreSettings(url=request.getfixturevalue("redis_server").url, prefix=prefix)


def run(settings: StoreSettings, body: Any) -> None:
    async def main() -> None:
        store = Store(settings)
        try:
            await body(store)
        finally:
            await store.aclose()
    asyncio.run(main())


def test_one_turns_commands_leave_as_one_pipeline_each_with_its_reply(one_redis: StoreSettings) -> None:
    async def body(store: Store) -> None:
        await store.client.set(store.key("a"), b"1")
        await store.client.hset(store.key("h"), "f", "2")
        sent = Sent(store)
        call = store.batched.call
        a, h, many = await asyncio.gather(call("GET", store.key("a")), call("HGET", store.key("h"), "f"),
                                          call("MGET", store.key("a"), store.key("missing")))
        assert (a, h, many) == (b"1", b"2", [b"1", None])
        assert sent.batches == [["GET", "HGET", "MGET"]]
        assert await store.batched.call("GET", store.key("a")) == b"1"  # alone in its turn: a plain command
        assert sent.batches[1:] == [["GET"]]
    run(one_redis, body)


def test_an_error_reply_fails_its_caller_alone(one_redis: StoreSettings) -> None:
    async def body(store: Store) -> None:
        await store.client.hset(store.key("h"), "f", "2")
        call = store.batched.call
        wrong, right = await asyncio.gather(call("GET", store.key("h")), call("HGET", store.key("h"), "f"),
                                            return_exceptions=True)
        assert isinstance(wrong, ResponseError) and "WRONGTYPE" in str(wrong)
        assert right == b"2"
        with pytest.raises(ResponseError, match="WRONGTYPE"):  # and alone in its turn, the same
            await store.batched.call("GET", store.key("h"))
    run(one_redis, body)


def test_a_store_that_cannot_be_reached_fails_every_caller_with_a_store_error() -> None:
    async def body(store: Store) -> None:
        results = await asyncio.gather(*(store.batched.call("GET", store.key(str(n))) for n in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, STORE_ERRORS) for r in results), results
    run(StoreSettings(url="redis://127.0.0.1:1/0", prefix="co", timeout=0.5), body)


def test_a_caller_that_gives_up_leaves_the_others_their_replies(one_redis: StoreSettings) -> None:
    async def body(store: Store) -> None:
        await store.client.set(store.key("a"), b"1")
        leaving = asyncio.ensure_future(store.batched.call("GET", store.key("a")))
        staying = asyncio.ensure_future(store.batched.call("GET", store.key("a")))
        await asyncio.sleep(0)
        leaving.cancel()
        assert await staying == b"1"
        assert leaving.cancelled()
    run(one_redis, body)


def test_a_cluster_sends_each_command_as_it_comes(redis_cluster: Any) -> None:
    """A cluster pipeline is split by slot anyway: there the commands go straight to their nodes."""
    async def body(store: Store) -> None:
        sent = Sent(store)
        await asyncio.gather(store.batched.call("GET", store.key("a")), store.batched.call("GET", store.key("b")))
        assert sent.batches == [["GET"], ["GET"]]
    run(StoreSettings(url=redis_cluster.url, prefix="co"), body)


def test_a_batch_on_connections_a_restart_killed_goes_again_command_by_command() -> None:
    """redis-py sends a single command again on a fresh connection after its pooled one died; a pipeline it
    does not. So after Redis restarts, the commands of a failed batch go again one by one."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS_REASON)
    redis = RedisServer().start()

    async def body(store: Store) -> None:
        call = store.batched.call
        await asyncio.gather(*(call("SET", store.key(str(n)), str(n)) for n in range(4)))  # four pooled connections
        redis.stop()
        redis.start()  # the same port: every pooled connection is dead, and redis-py does not know yet
        replies = await asyncio.gather(call("GET", store.key("0")), call("SET", store.key("x"), "1"),
                                       call("GET", store.key("x")), return_exceptions=True)
        assert replies == [None, True, None] or replies == [None, True, b"1"], replies

    try:
        run(StoreSettings(url=redis.url, prefix=f"co{secrets.token_hex(4)}"), body)
    finally:
        redis.stop()
