"""The batch workers: every replica runs `batch.workers` tasks over one Redis Stream of units.

A unit is claimed with XREADGROUP; one idle longer than `batch.lease_seconds` (its worker died: a
replica SIGKILLed mid-chunk) is taken over with XAUTOCLAIM, and a live worker keeps its lease by
claiming its unit again every third of the lease. A chunk's result is a whole file, written under a
temporary name and renamed, then recorded once (lua/batch_chunk.lua), then acknowledged: a unit that
runs twice overwrites its file and is counted once, so no line is ever in the output twice. The
worker that records the last chunk finalizes: the chunk files become the output and error Files.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import shutil
import socket
import time
from typing import Any

import orjson
from redis.exceptions import ResponseError

from proxy.batch_lines import ChunkRun, Planned, batch_principal, plan
from proxy.batches import GROUP, RUNNING, TERMINAL, WINDOW_SECONDS, BatchState, Status, output_file_id
from proxy.errors import NotFound
from proxy.files import write_atomic
from proxy.gateway import Gateway
from proxy.store import STORE_ERRORS

log = logging.getLogger("embedgate.batch")

STORE_RETRY_SECONDS = 1.0


def _errors(code: str, message: str, param: str | None = None) -> str:
    """A Batch object's `errors`: OpenAI's list of what made the whole batch fail."""
    return orjson.dumps({"object": "list", "data": [{"code": code, "message": message, "param": param,
                                                     "line": None}]}).decode()


class BatchWorkers:
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._settings = gw.settings.batch
        self._batches = gw.batches
        self._files = gw.files
        self._client = gw.store.client
        self._stream = gw.batches.stream
        self._name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._tasks: list[asyncio.Task[None]] = []
        # Checked by the loops too: a cancellation that lands inside a redis call may come out as a
        # connection error, which the loops survive.
        self._stopping = False

    def start(self) -> None:
        if not self._settings.workers:
            return
        for index in range(self._settings.workers):
            self._tasks.append(asyncio.create_task(self._loop(f"{self._name}-{index}"), name="embedgate-batch"))
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="embedgate-batch-sweep"))

    async def aclose(self) -> None:
        """Stop; a unit under way stays pending and another worker takes it over after its lease."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # --- the stream ------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def _loop(self, consumer: str) -> None:
        grouped = False
        while not self._stopping:
            try:
                if not grouped:
                    await self._ensure_group()
                    grouped = True
                unit = await self._claim(consumer)
                if unit is None:
                    await asyncio.sleep(self._settings.poll_seconds)
                    continue
                await self._hold(consumer, *unit)
            except STORE_ERRORS as err:
                log.warning("batch worker: store error (%s: %s); retrying", type(err).__name__, err)
                await asyncio.sleep(STORE_RETRY_SECONDS)

    async def _claim(self, consumer: str) -> tuple[str, dict[str, str]] | None:
        """A unit whose lease ran out, else a new one, else None."""
        lease_ms = int(self._settings.lease_seconds * 1000)
        reclaimed = await self._client.xautoclaim(self._stream, GROUP, consumer, lease_ms, start_id="0-0", count=1)
        entries: list[Any] = [e for e in reclaimed[1] if e and e[1]]
        if not entries:
            read = await self._client.xreadgroup(GROUP, consumer, {self._stream: ">"}, count=1)
            entries = [e for _, items in read or [] for e in items if e and e[1]]
        if not entries:
            return None
        entry_id, raw = entries[0]
        return entry_id.decode(), {k.decode(): v.decode() for k, v in raw.items()}

    async def _hold(self, consumer: str, entry_id: str, unit: dict[str, str]) -> None:
        keeper = asyncio.create_task(self._keep_lease(consumer, entry_id), name="embedgate-batch-lease")
        try:
            await self._run(unit["kind"], unit["batch"], int(unit["n"]))
        except STORE_ERRORS:
            raise  # not acknowledged: the unit runs again once its lease is out
        except Exception as err:  # a bug, not an outage: fail the batch rather than retry it for ever
            log.exception("batch %s: %s unit failed", unit["batch"], unit["kind"])
            await self._batches.move(unit["batch"], "failed", (*RUNNING, "cancelling"),
                                     errors=_errors("internal_error", f"The batch failed: {type(err).__name__}."))
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        pipe = self._gw.store.pipeline(transaction=False)
        pipe.xack(self._stream, GROUP, entry_id)
        pipe.xdel(self._stream, entry_id)
        await pipe.execute()

    async def _keep_lease(self, consumer: str, entry_id: str) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_seconds / 3)
            try:
                await self._client.xclaim(self._stream, GROUP, consumer, 0, [entry_id], justid=True)
            except STORE_ERRORS as err:
                log.warning("batch worker: lease not renewed (%s)", err)

    # --- the units -------------------------------------------------------------------------

    async def _run(self, kind: str, batch_id: str, n: int) -> None:
        state = await self._batches.state(batch_id)
        if state is None:
            return
        if kind == "validate":
            await self._validate(state)
        else:
            await self._chunk(state, n)

    async def _validate(self, state: BatchState) -> None:
        batch_id = state.meta.id
        if state.status == "cancelling":
            await self._finalize(batch_id)
            return
        if state.status == "in_progress":  # this unit ran before and died after moving the batch on
            done = await self._batches.chunks_done(batch_id)
            await self._batches.enqueue([("chunk", batch_id, n) for n in range(state.count("chunks"))
                                         if n not in done])
            return
        if state.status != "validating":
            return
        try:
            data = await self._files.read(await self._files.get(None, state.meta.input_file_id))
        except NotFound as err:
            await self._batches.move(batch_id, "failed", ("validating",),
                                     errors=_errors("file_not_found", err.message, "input_file_id"))
            return
        owner = state.meta.owner.principal() if state.meta.owner is not None else None
        checked = await plan(self._gw, batch_id, owner, data)
        if not checked.total:
            await self._batches.move(batch_id, "failed", ("validating",),
                                     errors=_errors("empty_file", "The input file has no lines.", "input_file_id"))
            return
        size = self._settings.chunk_lines
        chunks = math.ceil(len(checked.valid) / size)
        directory = self._batches.chunk_dir(batch_id)

        def write() -> None:
            write_atomic(directory / "invalid.jsonl", b"".join(checked.errors))
            for n in range(chunks):
                lines = checked.valid[n * size:(n + 1) * size]
                write_atomic(directory / f"input-{n}.jsonl", b"\n".join(p.encode() for p in lines) + b"\n")

        await asyncio.to_thread(write)
        moved = await self._batches.move(batch_id, "in_progress", ("validating",), total=checked.total,
                                         failed=len(checked.errors), completed=0, chunks=chunks, done=0)
        if not moved or not chunks:  # cancelled while validating, or nothing valid to run
            await self._finalize(batch_id)
            return
        await self._batches.enqueue([("chunk", batch_id, n) for n in range(chunks)])

    async def _chunk(self, state: BatchState, n: int) -> None:
        batch_id = state.meta.id
        directory = self._batches.chunk_dir(batch_id)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        if n in await self._batches.chunks_done(batch_id):  # it ran to the end before, and was recorded
            if (await self._batches.record_chunk(batch_id, n, 0, 0)).last:
                await self._finalize(batch_id)
            return
        if state.status == "in_progress":
            raw = await asyncio.to_thread((directory / f"input-{n}.jsonl").read_bytes)
            planned = [Planned.decode(line) for line in raw.splitlines() if line.strip()]
            run = ChunkRun(self._gw, state, await batch_principal(self._gw, state, self._settings.max_share))
            await run.run(planned)
            outputs, errors = run.outputs, run.errors

        def write() -> None:
            # Whole files, replaced if this chunk ran before: its lines are never in the output twice.
            write_atomic(directory / f"out-{n}.jsonl", b"".join(outputs))
            write_atomic(directory / f"err-{n}.jsonl", b"".join(errors))

        await asyncio.to_thread(write)
        recorded = await self._batches.record_chunk(batch_id, n, len(outputs), len(errors))
        if recorded.last:
            await self._finalize(batch_id)

    async def _finalize(self, batch_id: str) -> None:
        """Chunk files → output and error Files; then completed (or cancelled). Safe to run again."""
        state = await self._batches.state(batch_id)
        if state is None or state.status in TERMINAL:
            return
        if state.status == "in_progress":
            await self._batches.move(batch_id, "finalizing", ("in_progress",))
            state = await self._batches.state(batch_id)
            if state is None or state.status in TERMINAL:
                return
        final: Status = "cancelled" if state.status == "cancelling" else "completed"
        directory = self._batches.chunk_dir(batch_id)
        chunks = state.count("chunks")

        def collect(names: list[str]) -> bytes:
            return b"".join((directory / name).read_bytes() for name in names if (directory / name).exists())

        output = await asyncio.to_thread(collect, [f"out-{n}.jsonl" for n in range(chunks)])
        errors = await asyncio.to_thread(collect, ["invalid.jsonl", *(f"err-{n}.jsonl" for n in range(chunks))])
        fields: dict[str, str | int] = {}
        for kind, data in (("output", output), ("error", errors)):
            if data:
                record = await self._files.create(state.meta.team, f"{batch_id}_{kind}.jsonl", "batch_output", data,
                                                  file_id=output_file_id(batch_id, kind))
                fields[f"{kind}_file_id"] = record.id
        if await self._batches.move(batch_id, final, ("finalizing", "cancelling"), **fields):
            await asyncio.to_thread(shutil.rmtree, directory, True)
            log.info("batch %s %s", batch_id, final)

    # --- expiry and retention --------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._settings.sweep_seconds)
            try:
                await self.sweep(time.time())
            except STORE_ERRORS as err:
                log.warning("batch sweep: store error (%s)", err)

    async def sweep(self, now: float) -> None:
        """Unfinished batches past their 24h window expire; files past their retention are deleted."""
        for batch_id in await self._batches.unfinished_before(now - WINDOW_SECONDS):
            await self._batches.move(batch_id, "expired", (*RUNNING, "cancelling"))
        await self._files.sweep(now)
