"""The Batch API's state: batch records, their status moves, the work queue they feed.

Layout (every key under `store.prefix`):
  {p}:{b:<id>}          hash: `meta` (the immutable part, JSON), `status`, `<status>_at` times,
                        `total` / `completed` / `failed`, `chunks` and `done` (chunks recorded),
                        `output_file_id`, `error_file_id`, `errors` (JSON)
  {p}:{b:<id>}:done     hash of the chunk numbers recorded (once each: lua/batch_chunk.lua)
  {p}:batches:<team>    sorted set of the team's batch ids by created_at (ms)
  {p}:batches           every batch id, the same way (the master key's list and the expiry sweep)
  {p}:batchwork         the Redis Stream of units of work ("validate", batch) and ("chunk", batch, n),
                        read by the consumer group `workers` (proxy/batch_worker.py)
The two keys of one batch share the hash tag {b:<id>}, so each script touches one cluster slot.
Status moves are atomic and conditional (lua/batch_move.lua): a move from a status the batch has
left does nothing, so two workers, or a worker and a cancel, cannot undo each other.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field

from proxy.auth import Principal
from proxy.errors import Conflict, InvalidRequest, NotFound
from proxy.files import Files, list_view, owner_of, page, sees
from proxy.settings import Limits
from proxy.store import Store

ENDPOINT = "/v1/embeddings"
WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600
STREAM = "batchwork"
GROUP = "workers"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RUNNING = ("validating", "in_progress", "finalizing")
TIMES = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
         "cancelling_at", "cancelled_at")

Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                 "cancelled"]


def _script(name: str) -> str:
    return (resources.files("proxy") / "lua" / name).read_text()


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = Field(None, max_length=16)


class Owner(BaseModel):
    """The key that created a batch: its lines run as that key would run them."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    team: str | None
    models: tuple[str, ...] | None = None
    limits: Limits = Limits()

    def principal(self) -> Principal:
        return Principal(key_id=self.key_id, team=self.team, models=self.models, limits=self.limits)


class BatchMeta(BaseModel):
    """What never changes after creation."""

    model_config = ConfigDict(frozen=True)

    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    team: str | None
    owner: Owner | None  # None: created on an open gateway


@dataclass(frozen=True, slots=True)
class BatchState:
    meta: BatchMeta
    fields: dict[str, str]

    @property
    def status(self) -> str:
        return self.fields["status"]

    def count(self, name: str) -> int:
        return int(self.fields.get(name, 0))

    def view(self) -> dict[str, Any]:
        """OpenAI's Batch object."""
        times = {name: int(self.fields[name]) if name in self.fields else None for name in TIMES}
        times.update(created_at=self.meta.created_at, expires_at=self.meta.expires_at)
        errors = self.fields.get("errors")
        return {
            "id": self.meta.id, "object": "batch", "endpoint": ENDPOINT,
            "errors": orjson.loads(errors) if errors else None,
            "input_file_id": self.meta.input_file_id, "completion_window": WINDOW, "status": self.status,
            "output_file_id": self.fields.get("output_file_id"), "error_file_id": self.fields.get("error_file_id"),
            **times,
            "request_counts": {"total": self.count("total"), "completed": self.count("completed"),
                               "failed": self.count("failed")},
            "metadata": self.meta.metadata,
        }


class Recorded(NamedTuple):
    """lua/batch_chunk.lua's reply."""

    done: int
    chunks: int

    @property
    def last(self) -> bool:
        return self.done >= self.chunks


class Batches:
    def __init__(self, store: Store, files: Files) -> None:
        self._store = store
        self.files = files
        self._move = store.client.register_script(_script("batch_move.lua"))
        self._chunk = store.client.register_script(_script("batch_chunk.lua"))
        self.stream = store.key(STREAM)

    def key(self, batch_id: str) -> str:
        return self._store.key(f"{{b:{batch_id}}}")

    def _done_key(self, batch_id: str) -> str:
        return self.key(batch_id) + ":done"

    def _index(self, team: str | None) -> str:
        return self._store.key("batches", team) if team is not None else self._store.key("batches")

    def chunk_dir(self, batch_id: str) -> Path:
        return self.files.dir / "batches" / batch_id

    async def create(self, principal: Principal | None, body: BatchCreate) -> BatchState:
        if body.endpoint != ENDPOINT:
            raise InvalidRequest(f"endpoint must be {ENDPOINT!r}: this gateway batches embeddings only, "
                                 f"got {body.endpoint!r}.", param="endpoint", code="invalid_value")
        if body.completion_window != WINDOW:
            raise InvalidRequest(f"completion_window must be {WINDOW!r}, got {body.completion_window!r}.",
                                 param="completion_window", code="invalid_value")
        source = await self.files.get(principal, body.input_file_id)
        if source.purpose != "batch":
            raise InvalidRequest(f"File {source.id} has purpose {source.purpose!r}; a batch's input file must "
                                 "have purpose 'batch'.", param="input_file_id", code="invalid_value")
        now = int(time.time())
        owner = None if principal is None else Owner(key_id=principal.key_id, team=principal.team,
                                                      models=principal.models, limits=principal.limits)
        meta = BatchMeta(id="batch_" + secrets.token_hex(12), input_file_id=source.id, metadata=body.metadata,
                         created_at=now, expires_at=now + WINDOW_SECONDS, team=owner_of(principal), owner=owner)
        fields = {"meta": meta.model_dump_json(), "status": "validating"}
        score = time.time() * 1000
        pipe = self._store.pipeline(transaction=False)
        pipe.hset(self.key(meta.id), mapping=fields)
        pipe.zadd(self._index(None), {meta.id: score})
        if meta.team is not None:
            pipe.zadd(self._index(meta.team), {meta.id: score})
        await pipe.execute()
        await self.enqueue([("validate", meta.id, 0)])
        return BatchState(meta, fields)

    async def state(self, batch_id: str) -> BatchState | None:
        raw = await self._store.client.hgetall(self.key(batch_id))
        if not raw or b"meta" not in raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return BatchState(BatchMeta.model_validate_json(fields["meta"]), fields)

    async def get(self, principal: Principal | None, batch_id: str) -> BatchState:
        state = await self.state(batch_id)
        if state is None or not sees(principal, state.meta.team):
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
        return state

    async def page(self, principal: Principal | None, after: str | None, limit: int) -> dict[str, Any]:
        found = await page(self._store, self._index(owner_of(principal)), after, limit)
        states = [await self.state(i) for i in found.ids]
        return list_view([s.view() for s in states if s is not None], found.has_more)

    async def cancel(self, principal: Principal | None, batch_id: str) -> BatchState:
        state = await self.get(principal, batch_id)
        if not await self.move(batch_id, "cancelling", ("validating", "in_progress")):
            state = await self.get(principal, batch_id)
            if state.status not in ("cancelling", "cancelled"):
                raise Conflict(f"Cannot cancel a batch with status '{state.status}'.", code="batch_not_cancellable")
            return state
        # Workers skip the chunks left; the one that records the last chunk makes it `cancelled`.
        return await self.get(principal, batch_id)

    async def move(self, batch_id: str, status: Status, sources: tuple[str, ...], **fields: str | int) -> bool:
        """Move the batch to `status` if it is in one of `sources`, setting `fields` with it."""
        pairs = [str(x) for item in fields.items() for x in item]
        moved = await self._move(keys=[self.key(batch_id)],
                                 args=[status, int(time.time()), len(sources), *sources, *pairs])
        return bool(moved)

    async def record_chunk(self, batch_id: str, n: int, completed: int, failed: int) -> Recorded:
        done, chunks = await self._chunk(keys=[self.key(batch_id), self._done_key(batch_id)],
                                         args=[n, completed, failed])
        return Recorded(int(done), int(chunks))

    async def chunks_done(self, batch_id: str) -> set[int]:
        return {int(n) for n in await self._store.client.hkeys(self._done_key(batch_id))}

    async def enqueue(self, units: list[tuple[str, str, int]]) -> None:
        pipe = self._store.pipeline(transaction=False)
        for kind, batch_id, n in units:
            pipe.xadd(self.stream, {"kind": kind, "batch": batch_id, "n": str(n)})
        await pipe.execute()

    async def unfinished_before(self, cutoff: float) -> list[str]:
        """Ids of batches created before `cutoff` (epoch seconds): candidates for expiry."""
        raw = await self._store.client.zrangebyscore(self._index(None), "-inf", cutoff * 1000)
        return [item.decode() for item in raw]


def output_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file: fixed, so finalizing again replaces, never adds, a file."""
    return f"file-{kind[:3]}{batch_id.removeprefix('batch_')}"

