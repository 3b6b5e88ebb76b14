"""Accounting the store could not take: charges and usage kept in process while it is down, then
written exactly once when it answers again.

Every increment the store missed is kept as (kind, key, field) → amount, summed, per team. A flush
moves a team's pending increments into a batch with an id and applies it with one Lua call
(proxy/lua/flush.lua) that first sets the batch's marker key `SET NX`: a retry after a timeout, whose
first try may have landed, applies nothing twice. On shutdown what could not be flushed is written to
a spill file in `store.spill_dir`, which the next start replays (same batch ids, same guarantee).

Bounded: past `store.max_pending` distinct increments, usage loses its per-user and per-model detail
(each key's totals still count); charges are a handful of counters per key and day and always kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from proxy.lua import counter_script
from proxy.store import STORE_ERRORS, Store

log = logging.getLogger("embedgate.ledger")

MARKER_TTL = 7 * 86400  # a spill file replayed within a week is still applied once only
FLUSH_INTERVAL = 1.0  # seconds between flush attempts while anything is pending
HASH, WINDOW = "h", "w"
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Increment:
    kind: str  # HASH: HINCRBY with a TTL for a new key; WINDOW: a rate-window bucket
    key: str
    field: str = ""


@dataclass(slots=True)
class Batch:
    """Increments of one team, applied together under one id."""

    team: str
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    amounts: dict[Increment, int] = field(default_factory=dict)
    extras: dict[Increment, int] = field(default_factory=dict)  # TTL (HASH) or last charge second (WINDOW)

    def add(self, inc: Increment, amount: int, extra: int) -> None:
        self.amounts[inc] = self.amounts.get(inc, 0) + amount
        self.extras[inc] = max(self.extras.get(inc, 0), extra)

    def take(self, inc: Increment, amount: int) -> None:
        """Undo part of an increment (a refund), never below zero."""
        left = self.amounts.get(inc, 0) - amount
        if left > 0:
            self.amounts[inc] = left
        else:
            self.amounts.pop(inc, None)
            self.extras.pop(inc, None)

    def to_json(self) -> bytes:
        rows = [[inc.kind, inc.key, inc.field, amount, self.extras[inc]] for inc, amount in self.amounts.items()]
        return orjson.dumps({"team": self.team, "id": self.id, "increments": rows})

    @classmethod
    def from_json(cls, line: bytes) -> Batch:
        data = orjson.loads(line)
        batch = cls(team=str(data["team"]), id=str(data["id"]))
        for kind, key, fld, amount, extra in data["increments"]:
            batch.add(Increment(str(kind), str(key), str(fld)), int(amount), int(extra))
        return batch


class Ledger:
    def __init__(self, store: Store, max_pending: int, spill_dir: Path | None) -> None:
        self._store = store
        self._max_pending = max_pending
        self._spill_dir = spill_dir
        self._pending: dict[str, Batch] = {}  # team → increments not yet in a batch
        self._flushing: list[Batch] = []  # batches tried at least once: retried with the same id
        self._replayed: list[Path] = []  # claimed spill files, removed once their batches are applied
        self._apply = store.client.register_script(counter_script("flush.lua"))
        self._lock = asyncio.Lock()

    # Recording ------------------------------------------------------------------------------------

    def add(self, team: str, increments: Iterable[tuple[Increment, int, int]]) -> None:
        batch = self._pending.setdefault(team, Batch(team))
        for inc, amount, extra in increments:
            if amount > 0:
                batch.add(inc, amount, extra)

    def take(self, team: str, increments: Iterable[tuple[Increment, int]]) -> None:
        batch = self._pending.get(team)
        if batch is not None:
            for inc, amount in increments:
                batch.take(inc, amount)

    def add_usage(self, team: str, key: str, fields: Iterable[tuple[list[str], int]], ttl: int) -> None:
        """Usage hash fields (`[counter, key_id, user, model]`) the store missed. Past the bound the
        user and model detail is dropped: the key's totals still count."""
        coarse = self.size >= self._max_pending
        self.add(team, ((Increment(HASH, key, orjson.dumps([*parts[:2], "", OTHER] if coarse else parts).decode()),
                         amount, ttl) for parts, amount in fields))

    @property
    def size(self) -> int:
        return sum(len(b.amounts) for b in (*self._pending.values(), *self._flushing))

    @property
    def pending(self) -> bool:
        return any(b.amounts for b in (*self._pending.values(), *self._flushing))

    # Flushing -------------------------------------------------------------------------------------

    async def flush(self) -> bool:
        """Try to apply everything pending; True when nothing is left. Store errors are not raised."""
        async with self._lock:
            self._flushing += [b for b in self._pending.values() if b.amounts]
            self._pending = {}
            while self._flushing:
                batch = self._flushing[0]
                try:
                    applied = await self._apply_batch(batch)
                except STORE_ERRORS as err:
                    log.debug("flush of %d pending increments deferred: %s", self.size, err)
                    return False
                self._flushing.pop(0)
                if not applied:
                    log.info("batch %s of team %s was applied before; not counted again", batch.id, batch.team)
            for path in self._replayed:
                path.unlink(missing_ok=True)
            self._replayed = []
            return True

    async def _apply_batch(self, batch: Batch) -> bool:
        keys = [self._store.team_key(batch.team, "flush", batch.id)]
        args: list[Any] = [MARKER_TTL]
        index: dict[str, int] = {}
        for inc, amount in batch.amounts.items():
            if inc.key not in index:
                keys.append(inc.key)
                index[inc.key] = len(keys)
            args += [index[inc.key], inc.kind, inc.field, amount, batch.extras[inc]]
        if len(keys) == 1:
            return True
        applied = int(await self._apply(keys=keys, args=args)) == 1
        await self._store.client.sadd(self._store.key("teams"), batch.team)  # a set: safe to repeat
        return applied

    async def run(self) -> None:
        """Flush in the background while anything is pending."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if self.pending:
                await self.flush()

    # Spilling -------------------------------------------------------------------------------------

    def spill(self) -> Path | None:
        """Write what is still pending to a new spill file (at shutdown, the store still down)."""
        batches = [b for b in (*self._flushing, *self._pending.values()) if b.amounts]
        if not batches or self._spill_dir is None:
            return None
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        path = self._spill_dir / f"pending-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(b.to_json() + b"\n" for b in batches))
        tmp.replace(path)  # whole or absent: a crash mid-write leaves only the .tmp
        for claimed in self._replayed:  # their batches are in the new file
            claimed.unlink(missing_ok=True)
        log.warning("store still unavailable at shutdown: %d pending increments written to %s", self.size, path)
        return path

    def replay(self) -> int:
        """Claim spill files left by earlier processes (rename is atomic: one worker wins each) and queue
        their batches; returns how many."""
        if self._spill_dir is None or not self._spill_dir.is_dir():
            return 0
        count = 0
        for path in sorted(self._spill_dir.glob("*.jsonl")):
            if not _unowned(path):
                continue
            claimed = path.with_name(f"claimed-{os.getpid()}-{path.name.split('pending-', 1)[-1]}")
            try:
                path.rename(claimed)
            except FileNotFoundError:  # another worker took it
                continue
            batches = [Batch.from_json(line) for line in claimed.read_bytes().splitlines() if line.strip()]
            self._flushing += batches
            self._replayed.append(claimed)
            count += len(batches)
        if count:
            log.info("replaying %d batches of accounting spilled by an earlier shutdown", count)
        return count


def _unowned(path: Path) -> bool:
    """A spill file no live process is replaying: a fresh one, or one claimed by a process that died."""
    if path.name.startswith("pending-"):
        return True
    if not path.name.startswith("claimed-"):
        return False
    owner = int(path.name.split("-")[1])
    if owner == os.getpid():
        return False
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
