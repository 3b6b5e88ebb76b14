"""Single flight with write-behind, for the embedding cache (proxy/cache.py).

A flight is one backend call for some keys, then, when the caller asked for it, the write of what
the call returned. Its keys stay registered from the call's start until that write has landed (or
failed): while the call is under way a request for one of them joins it; once it has answered, its
result is there to take at once (`Flight.landed`). The requests waiting on a flight get the result as
soon as the call answers; the write runs after, in the background, so no answer waits on it.

A call no request waits on any more is cancelled; a write, once started, always runs to its end
(`aclose` bounds how long shutdown waits for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

log = logging.getLogger("embedgate.cache")

T = TypeVar("T")
Write = Callable[[T], Coroutine[Any, Any, None]]

WRITE_GRACE_SECONDS = 5.0  # how long shutdown waits for writes still under way before cancelling them


class Flight(Generic[T]):
    """One backend call, shared by every request that wants one of its keys."""

    __slots__ = ("call", "waiters")

    def __init__(self, call: asyncio.Task[T]) -> None:
        self.call = call
        self.waiters = 0

    @property
    def under_way(self) -> bool:
        return not self.call.done()

    @property
    def landed(self) -> T | None:
        """The call's result once it answered; None while it is under way, or when it failed."""
        call = self.call
        if not call.done() or call.cancelled() or call.exception() is not None:
            return None
        return call.result()

    async def join(self) -> T:
        """The call's result (or its error), as one of its waiters."""
        self.waiters += 1
        try:
            # Shielded: a client that hangs up does not cancel the call others wait on...
            return await asyncio.shield(self.call)
        finally:
            self.waiters -= 1
            if not self.waiters:
                # ...but one no request waits on any more is not worth finishing. Once it has answered
                # this does nothing: its write is a task of its own and goes on.
                self.call.cancel()


class Flights(Generic[T]):
    """The flights of one process by key, and the writes still under way."""

    def __init__(self) -> None:
        self._by_key: dict[str, Flight[T]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> Flight[T] | None:
        """The flight registered for `key`: its call under way, or answered with the write behind."""
        return self._by_key.get(key)

    def under_way(self, key: str) -> Flight[T] | None:
        """The flight for `key` while its call is still under way."""
        flight = self._by_key.get(key)
        return flight if flight is not None and flight.under_way else None

    def __len__(self) -> int:
        """How many keys are registered: in flight, or answered with their write under way."""
        return len(self._by_key)

    def launch(self, keys: Sequence[str], call: Coroutine[Any, Any, T], write: Write[T] | None) -> Flight[T]:
        """Start `call` for `keys`; once it answers, `write` its result in the background (None: no write)."""
        flight = Flight(asyncio.create_task(call, name="embedgate-cache-flight"))
        for key in keys:
            self._by_key[key] = flight
        # Registered before any waiter's, so the write starts before the waiters resume: its command
        # normally leaves for the store before their answers leave for the clients.
        flight.call.add_done_callback(partial(self._answered, flight, list(keys), write))
        return flight

    def write_behind(self, write: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `write` in the background; `settled` and `aclose` wait for it."""
        task = asyncio.create_task(write, name="embedgate-cache-write")
        self._writes.add(task)
        task.add_done_callback(self._written)
        return task

    def _answered(self, flight: Flight[T], keys: list[str], write: Write[T] | None, call: asyncio.Task[T]) -> None:
        landed = flight.landed
        if landed is None:
            if not call.cancelled():
                call.exception()  # retrieved here: its waiters got it, or there were none left
            self._release(flight, keys)
        elif write is None:
            self._release(flight, keys)
        else:
            self.write_behind(write(landed)).add_done_callback(lambda _: self._release(flight, keys))

    def _release(self, flight: Flight[T], keys: list[str]) -> None:
        for key in keys:
            if self._by_key.get(key) is flight:
                del self._by_key[key]

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and (err := task.exception()) is not None:
            # Store errors are handled inside the write; anything else is a bug, logged rather than lost.
            log.error("cache write failed: %s: %s", type(err).__name__, err, exc_info=err)

    async def settled(self) -> None:
        """Return once every write started so far (and any started meanwhile) has landed or failed."""
        while self._writes:
            await asyncio.wait(set(self._writes))

    async def aclose(self, grace: float = WRITE_GRACE_SECONDS) -> None:
        """Cancel the calls still under way; give the writes `grace` seconds to land, then cancel them."""
        calls = {flight.call for flight in self._by_key.values() if not flight.call.done()}
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if self._writes:
            _, late = await asyncio.wait(set(self._writes), timeout=grace)
            if late:
                log.warning("shutdown: %d cache writes still under way after %.0fs; cancelled", len(late), grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
