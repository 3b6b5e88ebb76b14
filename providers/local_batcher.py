"""Queued inputs → forward passes within a token and size budget, run on the model's own threads.

Concurrent requests join the same pass; `workers` passes run side by side, each on its own thread. Inputs
are taken in rounds: a round is everything queued when the previous one ran out, sorted by length so a pass
pads little; inputs that arrive meanwhile wait for the next round (no starvation), except to top up the
round's last pass: that pass holds the round's longest inputs, so it takes the new ones nearest its width,
not the shortest, which would pad to them. A request whose caller went away (its future cancelled or timed
out) is dropped from the queue before its pass.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from providers.base import ErrorKind, ProviderError, Vectors, bad_response

P = TypeVar("P")  # what the model reads for one input (token ids, or the text)
# What a forward pass costs beyond its padded tokens, in tokens' worth. Measured for all-MiniLM-L6-v2 on one
# torch thread of a 2-CPU Xeon: a pass costs about 4 ms + 0.24 ms per padded token, whatever its size.
CPU_PASS_OVERHEAD = 30


class QueueObserver(Protocol):
    """What the gateway learns of the batching queue, for its metrics and traces (providers know neither)."""

    def job(self) -> object:
        """Called in the requester's context as its job is queued; what it returns comes back in `forward`."""
        ...

    def queue_depth(self, inputs: int) -> None:
        """Inputs now waiting for a forward pass."""
        ...

    def forward(self, inputs: int, start_ns: int, end_ns: int, jobs: Sequence[object]) -> None:
        """One forward pass over `inputs` inputs, wall-clock times in ns, with what `job` gave each job."""
        ...


class Unobserved:
    def job(self) -> object:
        return None

    def queue_depth(self, inputs: int) -> None:
        pass

    def forward(self, inputs: int, start_ns: int, end_ns: int, jobs: Sequence[object]) -> None:
        pass


@dataclass(eq=False, slots=True)
class _Request(Generic[P]):
    payloads: Sequence[P]
    future: asyncio.Future[Vectors] = field(repr=False)
    tag: object  # the observer's, e.g. the requester's trace context
    waiting: int  # inputs not yet taken into a pass
    pending: int  # inputs without a vector yet
    rows: Vectors | None = None
    dropped: bool = False


@dataclass(slots=True)
class _Item(Generic[P]):
    request: _Request[P]
    index: int
    length: int


class Batcher(Generic[P]):
    """Feeds `forward` (payloads of one pass → one row each) on `executor`, `workers` passes at a time."""

    def __init__(self, forward: Callable[[list[P]], Vectors], executor: Executor, *, max_batch_tokens: int,
                 max_batch_size: int, max_wait: float, max_queued: int, min_batch_size: int = 1,
                 pass_overhead: int = CPU_PASS_OVERHEAD, workers: int = 1) -> None:
        self._forward = forward
        self._executor = executor
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        # Past min_batch_size inputs a pass takes one more only while that does not lower its useful share,
        # real tokens ÷ (pass_overhead + padded tokens): a pass grows while its inputs are alike in length,
        # and ends where the next would pad it more than another pass costs.
        self.min_batch_size = min_batch_size
        self.pass_overhead = pass_overhead
        self.max_wait = max_wait
        self.max_queued = max_queued
        self.workers = workers  # `executor` needs as many threads
        self.queued_inputs = 0  # waiting for a pass (the 503 bound)
        self.encoding_inputs = 0  # in the passes under way (0 when idle)
        self.passes = 0  # forward passes started
        self.observer: QueueObserver = Unobserved()
        self._queue: list[_Item[P]] = []  # arrived since the round began
        self._round: list[_Item[P]] = []  # longest first: a pass takes from the end
        self._dead = 0  # items of dropped requests still in the lists
        self._in_pass: dict[int, list[_Item[P]]] = {}  # by worker
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._serve(worker), name=f"embedgate-local-batcher-{worker}")
                       for worker in range(self.workers)]

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    def submit(self, payloads: Sequence[P], lengths: Sequence[int]) -> asyncio.Future[Vectors]:
        """A future of the rows for `payloads` (`lengths`: model tokens of each); cancel it to drop them."""
        if self.queued_inputs + len(payloads) > self.max_queued:
            raise ProviderError(ErrorKind.OVERLOADED, "local model queue is full", retry_after=1.0)
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        if not payloads:
            future.set_result(np.zeros((0, 0), dtype=np.float32))
            return future
        request = _Request(payloads, future, self.observer.job(), waiting=len(payloads), pending=len(payloads))
        future.add_done_callback(lambda _: self._drop(request))
        self._queue.extend(_Item(request, i, max(1, n)) for i, n in enumerate(lengths))
        self.queued_inputs += len(payloads)
        self.observer.queue_depth(self.queued_inputs)
        self._wake.set()
        return future

    def _drop(self, request: _Request[P]) -> None:
        request.dropped = True
        if request.waiting:
            self.queued_inputs -= request.waiting
            self._dead += request.waiting
            request.waiting = 0
            self.observer.queue_depth(self.queued_inputs)

    def _next_pass(self) -> list[_Item[P]]:
        if self._dead > self.queued_inputs:  # mostly dead: sweep, so dropped requests hold no memory
            self._queue = [item for item in self._queue if not item.request.dropped]
            self._round = [item for item in self._round if not item.request.dropped]
            self._dead = 0
        chosen: list[_Item[P]] = []
        width = tokens = 0
        while len(chosen) < self.max_batch_size:
            if not self._round:
                if not self._queue:
                    break
                self._new_round()
                if chosen:
                    width, tokens = self._top_up(chosen, width, tokens)
                    break
                continue
            item = self._round[-1]
            if item.request.dropped:
                self._round.pop()
                self._dead = max(0, self._dead - 1)
                continue
            if not self._fits(len(chosen), width, tokens, item.length):
                break
            self._round.pop()
            chosen.append(item)
            width, tokens = max(width, item.length), tokens + item.length
        for item in chosen:
            item.request.waiting -= 1
        if chosen:
            self.queued_inputs -= len(chosen)
            self.observer.queue_depth(self.queued_inputs)
        return chosen

    def _new_round(self) -> None:
        live = [item for item in reversed(self._queue) if not item.request.dropped]
        self._dead = max(0, self._dead - (len(self._queue) - len(live)))
        # Longest first, and among equals the latest first: passes take the shortest, oldest from the end.
        self._round, self._queue = sorted(live, key=lambda item: -item.length), []

    def _fits(self, count: int, width: int, tokens: int, length: int) -> bool:
        """Whether a pass of `count` inputs, `width` wide, `tokens` in all, may take one of `length` more."""
        padded = (count + 1) * max(width, length)
        if count and padded > self.max_batch_tokens:
            return False  # a single input longer than the budget still goes, alone
        if count < self.min_batch_size:
            return True
        overhead = self.pass_overhead
        return (tokens + length) * (overhead + count * width) >= tokens * (overhead + padded)

    def _top_up(self, chosen: list[_Item[P]], width: int, tokens: int) -> tuple[int, int]:
        """The round ran out mid-pass, leaving its longest inputs in it: fill the pass from the new round
        with the inputs nearest its width rather than the shortest, which would pad to the old round's
        longest. Returns the pass's width and tokens."""
        ordered = self._round  # longest first
        # ordered[lo:hi] is taken; it starts, empty, where the inputs no wider than the pass begin.
        lo = hi = bisect.bisect_left(ordered, -width, key=lambda item: -item.length)
        while len(chosen) < self.max_batch_size and (lo > 0 or hi < len(ordered)):
            # A shorter input pads itself to the width; a longer one widens every input already chosen.
            shorter = width - ordered[hi].length if hi < len(ordered) else None
            longer = len(chosen) * (ordered[lo - 1].length - width) if lo > 0 else None
            take_shorter = longer is None or (shorter is not None and shorter <= longer)
            item = ordered[hi] if take_shorter else ordered[lo - 1]
            if not self._fits(len(chosen), width, tokens, item.length):
                break
            hi, lo = (hi + 1, lo) if take_shorter else (hi, lo - 1)
            chosen.append(item)
            width, tokens = max(width, item.length), tokens + item.length
        del ordered[lo:hi]
        return width, tokens

    async def _serve(self, worker: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = self._next_pass()
            if not items:
                self._wake.clear()
                await self._wake.wait()
                # This worker was idle: give requests sent at the same moment a chance to join its pass.
                if self.max_wait > 0 and self.queued_inputs < self.max_batch_size:
                    await asyncio.sleep(self.max_wait)
                continue
            self.passes += 1
            self.encoding_inputs += len(items)
            self._in_pass[worker] = items
            start_ns = time.time_ns()
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self._forward, [i.request.payloads[i.index] for i in items])
            except Exception as err:  # the model failed: every request in the pass learns why
                self._fail(items, ProviderError(ErrorKind.UNAVAILABLE,
                                                f"local model failed: {type(err).__name__}: {err}"))
                continue
            finally:
                self.encoding_inputs -= len(items)
                del self._in_pass[worker]
            served = dict.fromkeys(item.request for item in items)
            self.observer.forward(len(items), start_ns, time.time_ns(), [request.tag for request in served])
            if vectors.ndim != 2 or vectors.shape[0] != len(items):
                self._fail(items, bad_response(f"local model returned {vectors.shape[0] if vectors.ndim else 0} "
                                               f"embeddings for {len(items)} inputs"))
                continue
            self._deliver(items, vectors)

    @staticmethod
    def _fail(items: list[_Item[P]], error: ProviderError) -> None:
        for item in items:
            if not item.request.future.done():
                item.request.future.set_exception(error)

    @staticmethod
    def _deliver(items: list[_Item[P]], vectors: Vectors) -> None:
        for item, row in zip(items, vectors, strict=True):
            request = item.request
            if request.future.done():  # gone, timed out, or failed in another pass
                continue
            if request.rows is None:
                request.rows = np.empty((len(request.payloads), vectors.shape[1]), dtype=np.float32)
            request.rows[item.index] = row
            request.pending -= 1
            if not request.pending:
                request.future.set_result(request.rows)

    async def aclose(self) -> None:
        waiting = [*self._queue, *self._round, *(item for items in self._in_pass.values() for item in items)]
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for item in waiting:
            if not item.request.future.done():
                item.request.future.cancel()
