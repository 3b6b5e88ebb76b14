"""The local model's batcher: passes within budget, sorted by length, merged, and dropped when their caller goes."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar

import numpy as np
import pytest

from providers.base import ErrorKind, ProviderError
from providers.local_batcher import CPU_PASS_OVERHEAD, Batcher


class Model:
    """A stand-in forward pass: row i is [payload, 1.0]; records every pass; can be held at the gate."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_with: Exception | None = None
        self.rows_short = False

    def forward(self, payloads: list[int]) -> np.ndarray:
        self.passes.append(list(payloads))
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_with is not None:
            raise self.fail_with
        rows = np.array([[p, 1.0] for p in payloads], dtype=np.float32)
        return rows[1:] if self.rows_short else rows


pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def running(model: Model, max_batch_tokens: int = 64, max_batch_size: int = 4, min_batch_size: int = 4,
                  pass_overhead: int = CPU_PASS_OVERHEAD, workers: int = 1) -> AsyncIterator[Batcher[int]]:
    executor = ThreadPoolExecutor(max_workers=workers)
    batcher = Batcher(model.forward, executor, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                      max_wait=0.0, max_queued=64, min_batch_size=min_batch_size, pass_overhead=pass_overhead,
                      workers=workers)
    batcher.start()
    yield batcher
    await batcher.aclose()
    model.gate.set()
    executor.shutdown(wait=True)


async def hold(model: Model, batcher: Batcher[int]) -> asyncio.Future[np.ndarray]:
    """Start a pass of one input (payload -1) and keep it running until `model.gate` is set."""
    model.gate.clear()
    future = batcher.submit([-1], [1])
    await asyncio.to_thread(model.entered.wait, 10)
    assert batcher.encoding_inputs == 1
    return future


def answer(payloads: list[int]) -> np.ndarray:
    return np.array([[p, 1.0] for p in payloads], dtype=np.float32)


async def test_requests_queued_during_a_pass_are_merged_into_the_next() -> None:
    model = Model()
    async with running(model) as batcher:
        first = await hold(model, batcher)
        futures = [batcher.submit([i], [3]) for i in range(4)]
        model.gate.set()
        results = await asyncio.gather(first, *futures)
        assert model.passes == [[-1], [0, 1, 2, 3]]
        assert batcher.passes == 2
        for i, rows in enumerate(results[1:]):
            np.testing.assert_array_equal(rows, answer([i]))


REQUESTER: ContextVar[str] = ContextVar("requester", default="?")


class Watch:
    """An observer as the gateway's metrics and traces use it."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.passes: list[tuple[int, list[object]]] = []

    def job(self) -> object:
        return REQUESTER.get()  # e.g. the requester's trace context

    def queue_depth(self, inputs: int) -> None:
        self.depths.append(inputs)

    def forward(self, inputs: int, start_ns: int, end_ns: int, jobs: Sequence[object]) -> None:
        assert start_ns <= end_ns
        self.passes.append((inputs, list(jobs)))


async def test_the_observer_sees_queue_depth_and_each_pass_with_its_requesters() -> None:
    model, watch = Model(), Watch()

    async def request(name: str, payloads: list[int]) -> np.ndarray:
        REQUESTER.set(name)
        return await batcher.submit(payloads, [1] * len(payloads))

    async with running(model) as batcher:
        batcher.observer = watch
        first = await hold(model, batcher)
        waiting = [asyncio.create_task(request("a", [1, 2])), asyncio.create_task(request("b", [3]))]
        await asyncio.sleep(0)  # both tasks run up to their wait
        assert batcher.queued_inputs == 3
        model.gate.set()
        await asyncio.gather(first, *waiting)
    assert watch.passes == [(1, ["?"]), (3, ["a", "b"])]
    assert watch.depths == [1, 0, 2, 3, 0]


async def test_passes_keep_to_the_budgets_and_pad_little() -> None:
    model = Model()
    async with running(model) as batcher:
        rng = random.Random(3)
        lengths = [[rng.randint(1, 40) for _ in range(rng.randint(1, 5))] for _ in range(12)]
        first = await hold(model, batcher)
        payloads = [[100 * r + i for i in range(len(ls))] for r, ls in enumerate(lengths)]
        futures = [batcher.submit(p, ls) for p, ls in zip(payloads, lengths, strict=True)]
        assert batcher.queued_inputs == sum(map(len, lengths))
        model.gate.set()
        results = await asyncio.gather(first, *futures)
        for p, rows in zip(payloads, results[1:], strict=True):
            np.testing.assert_array_equal(rows, answer(p))  # each request its own rows, in its order
        length_of = {100 * r + i: n for r, ls in enumerate(lengths) for i, n in enumerate(ls)}
        for done in model.passes[1:]:
            widths = [length_of[p] for p in done]
            assert len(done) <= batcher.max_batch_size
            assert len(done) * max(widths) <= batcher.max_batch_tokens
            assert widths == sorted(widths)  # one round, taken shortest first
        assert sorted(p for done in model.passes[1:] for p in done) == sorted(length_of)
        assert batcher.queued_inputs == 0


class Stepper(Model):
    """A forward pass that runs only when the test lets one through (`step`), so requests can arrive mid-pass."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = threading.Semaphore(0)
        self.began = threading.Condition()

    def forward(self, payloads: list[int]) -> np.ndarray:
        with self.began:
            self.passes.append(list(payloads))
            self.began.notify_all()
        assert self.steps.acquire(timeout=10), "the test never let the pass through"
        return answer(payloads)

    async def entered_passes(self, count: int) -> None:
        def wait() -> None:
            with self.began:
                assert self.began.wait_for(lambda: len(self.passes) >= count, timeout=10)

        await asyncio.to_thread(wait)

    async def step(self, passes_entered: int) -> None:
        """Let the pass under way finish, then wait until `passes_entered` passes have begun."""
        self.steps.release()
        await self.entered_passes(passes_entered)


async def test_a_round_that_runs_out_mid_pass_is_topped_up_with_the_nearest_lengths() -> None:
    model = Stepper()
    async with running(model, max_batch_tokens=1000, max_batch_size=4, min_batch_size=4) as batcher:
        first = batcher.submit([-1], [1])
        await model.entered_passes(1)  # [-1], held until the next step
        old = [batcher.submit([i], [n]) for i, n in enumerate([10, 10, 10, 10, 40, 40], start=1)]
        await model.step(2)  # the round of these six: [1, 2, 3, 4] (the shortest) is under way
        new = [batcher.submit([i], [n]) for i, n in enumerate([10, 12, 38, 39, 60], start=11)]
        for _ in range(3):
            model.steps.release()
        await asyncio.gather(first, *old, *new)
    # The old round's longest two (40) are joined by the new round's nearest (39, 38), not its shortest (10, 12).
    assert model.passes == [[-1], [1, 2, 3, 4], [5, 6, 14, 13], [11, 12, 15]]


async def test_an_input_longer_than_the_budget_goes_alone() -> None:
    model = Model()
    async with running(model) as batcher:
        first = await hold(model, batcher)
        futures = [batcher.submit([1, 2], [10, 200]), batcher.submit([3], [10])]
        model.gate.set()
        await asyncio.gather(first, *futures)
        assert model.passes[1:] == [[1, 3], [2]]


@pytest.mark.parametrize(("min_batch_size", "pass_overhead", "passes"), [
    (2, 16, [[1, 2, 3], [4, 5]]),  # 3 x 11 and 2 x 40 tokens, rather than 5 x 40
    (5, 16, [[1, 2, 3, 4, 5]]),  # below min_batch_size a pass takes what comes
    (2, 1000, [[1, 2, 3, 4, 5]]),  # a pass that costs as much as 1,000 tokens is worth padding
])
async def test_past_min_batch_size_a_pass_ends_where_padding_costs_more_than_a_pass(
        min_batch_size: int, pass_overhead: int, passes: list[list[int]]) -> None:
    model = Model()
    async with running(model, max_batch_tokens=1000, max_batch_size=8, min_batch_size=min_batch_size,
                       pass_overhead=pass_overhead) as batcher:
        first = await hold(model, batcher)
        futures = [batcher.submit([1, 4], [10, 40]), batcher.submit([2, 3, 5], [10, 11, 40])]
        model.gate.set()
        await asyncio.gather(first, *futures)
        assert model.passes[1:] == passes


async def test_workers_run_passes_side_by_side() -> None:
    model = Stepper()
    async with running(model, workers=2) as batcher:
        first = batcher.submit([1], [3])
        await model.entered_passes(1)
        second = batcher.submit([2, 3], [3, 3])  # the other worker takes it while the first pass runs
        await model.entered_passes(2)
        assert batcher.encoding_inputs == 3 and batcher.queued_inputs == 0
        third = batcher.submit([4], [3])  # both workers busy: it waits
        assert batcher.queued_inputs == 1
        for _ in range(3):
            model.steps.release()
        results = await asyncio.gather(first, second, third)
    assert model.passes == [[1], [2, 3], [4]]
    for payloads, rows in zip([[1], [2, 3], [4]], results, strict=True):
        np.testing.assert_array_equal(rows, answer(payloads))
    assert batcher.encoding_inputs == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_closing_cancels_the_requests_in_passes_under_way_and_queued(workers: int) -> None:
    model = Stepper()
    async with running(model, workers=workers) as batcher:
        under_way = []
        for worker in range(workers):  # one pass each
            under_way.append(batcher.submit([worker], [3]))
            await model.entered_passes(worker + 1)
        queued = batcher.submit([9], [3])
        await batcher.aclose()
        assert all(future.cancelled() for future in [*under_way, queued])
        assert not batcher.running
        for _ in range(workers):
            model.steps.release()


async def test_a_cancelled_request_is_dropped_before_its_pass() -> None:
    model = Model()
    async with running(model) as batcher:
        first = await hold(model, batcher)
        kept, gone = batcher.submit([6, 7], [2, 2]), batcher.submit([8], [2])
        assert batcher.queued_inputs == 3
        gone.cancel()
        await asyncio.sleep(0)  # its done-callback runs
        assert batcher.queued_inputs == 2
        model.gate.set()
        await asyncio.gather(first, kept)
        assert model.passes == [[-1], [6, 7]]


async def test_a_full_queue_refuses_until_room_is_made() -> None:
    model = Model()
    async with running(model) as batcher:
        first = await hold(model, batcher)
        queued = batcher.submit(list(range(64)), [1] * 64)
        with pytest.raises(ProviderError) as exc:
            batcher.submit([99], [1])
        assert exc.value.kind is ErrorKind.OVERLOADED
        queued.cancel()
        await asyncio.sleep(0)
        room = batcher.submit([99], [1])
        model.gate.set()
        await asyncio.gather(first, room)
        assert model.passes == [[-1], [99]]


async def test_a_failed_pass_fails_its_requests_and_the_next_pass_runs() -> None:
    model = Model()
    async with running(model) as batcher:
        model.fail_with = RuntimeError("CUDA out of memory")
        with pytest.raises(ProviderError) as exc:
            await batcher.submit([1], [1])
        assert exc.value.kind is ErrorKind.UNAVAILABLE and "CUDA out of memory" in exc.value.message
        model.fail_with, model.rows_short = None, True
        with pytest.raises(ProviderError) as exc:
            await batcher.submit([2, 3], [1, 1])
        assert exc.value.kind is ErrorKind.BAD_RESPONSE
        model.rows_short = False
        np.testing.assert_array_equal(await batcher.submit([4], [1]), answer([4]))
        assert batcher.running
