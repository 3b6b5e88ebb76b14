"""The Files API's storage: bytes in a directory (`files.dir`), metadata in the store.

Layout (every key under `store.prefix`):
  {p}:file:<id>       the file's metadata (JSON, its owner team included; never shown to clients)
  {p}:files:<team>    sorted set of the team's file ids, scored by created_at in ms
  {p}:files           every file id, the same way: the master key's list and the retention sweep
Bytes are at `files.dir/<id>`, written to a temporary name and renamed, so a reader never sees half.
A file belongs to the team of the key that uploaded it; another team's key gets 404, the master key
(and an open gateway) sees all.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from proxy.auth import Principal
from proxy.errors import NotFound
from proxy.settings import FilesSettings
from proxy.store import Store

MAX_PAGE = 10_000
DEFAULT_PAGE = 20
DAY = 86_400


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    team: str | None  # None: uploaded with the master key or to an open gateway

    def view(self) -> dict[str, Any]:
        """OpenAI's File object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "expires_at": self.expires_at, "filename": self.filename, "purpose": self.purpose,
                "status": "processed", "status_details": None}


def owner_of(principal: Principal | None) -> str | None:
    return None if principal is None else principal.team


def sees(principal: Principal | None, team: str | None) -> bool:
    """Whether `principal` may see an object of `team`: its own team's, or all for the master key."""
    return principal is None or principal.team is None or principal.team == team


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[str]
    has_more: bool


async def page(store: Store, index: str, after: str | None, limit: int, newest_first: bool = True) -> Page:
    """One page of a sorted-set index after the id `after` (OpenAI's cursor), `limit` ids long."""
    client = store.client
    start = 0
    if after is not None:
        rank = await (client.zrevrank(index, after) if newest_first else client.zrank(index, after))
        if rank is None:
            return Page([], False)
        start = int(rank) + 1
    read = client.zrevrange if newest_first else client.zrange
    raw = await read(index, start, start + limit)  # one more than asked: is there more?
    ids = [item.decode() for item in raw]
    return Page(ids[:limit], len(ids) > limit)


def list_view(items: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": list(items), "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


def write_atomic(path: Path, data: bytes) -> None:
    """The whole file or nothing: a temporary name in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Files:
    def __init__(self, settings: FilesSettings, store: Store) -> None:
        self.settings = settings
        self._store = store
        self.dir = settings.dir

    def _meta(self, file_id: str) -> str:
        return self._store.key("file", file_id)

    def _index(self, team: str | None) -> str:
        return self._store.key("files", team) if team is not None else self._store.key("files")

    def path(self, file_id: str) -> Path:
        return self.dir / file_id

    async def create(self, team: str | None, filename: str, purpose: str, data: bytes,
                     file_id: str | None = None) -> FileRecord:
        """Store `data` as a new file (or, given `file_id`, replace that one: what finalizing a batch
        again after a crash does, so it never makes a second output file)."""
        now = int(time.time())
        record = FileRecord(id=file_id or "file-" + secrets.token_hex(12), bytes=len(data), created_at=now,
                            expires_at=now + int(self.settings.retention_days * DAY), filename=filename,
                            purpose=purpose, team=team)
        await asyncio.to_thread(write_atomic, self.path(record.id), data)
        score = time.time() * 1000
        pipe = self._store.pipeline(transaction=False)
        pipe.set(self._meta(record.id), record.model_dump_json())
        pipe.zadd(self._index(None), {record.id: score})
        if team is not None:
            pipe.zadd(self._index(team), {record.id: score})
        await pipe.execute()
        return record

    async def get(self, principal: Principal | None, file_id: str) -> FileRecord:
        """The file, or 404 when it does not exist or belongs to another team."""
        raw = await self._store.client.get(self._meta(file_id))
        record = None if raw is None else FileRecord.model_validate_json(raw)
        if record is None or not sees(principal, record.team):
            raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
        return record

    async def read(self, record: FileRecord) -> bytes:
        try:
            return await asyncio.to_thread(self.path(record.id).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"The content of {record.id} is gone.", code="file_not_found") from None

    async def page(self, principal: Principal | None, after: str | None, limit: int, newest_first: bool,
                   purpose: str | None) -> dict[str, Any]:
        index = self._index(principal.team if principal is not None else None)
        items: list[dict[str, Any]] = []
        has_more = True
        # A purpose filter may skip ids: read on until the page is full or the index ends.
        while has_more and len(items) < limit:
            found = await page(self._store, index, after, limit, newest_first)
            has_more = found.has_more
            if not found.ids:
                break
            after = found.ids[-1]
            records = await self._store.get_many([self._meta(i) for i in found.ids])
            for raw in records:
                if raw is None:
                    continue
                record = FileRecord.model_validate_json(raw)
                if purpose is None or record.purpose == purpose:
                    items.append(record.view())
        has_more = has_more or len(items) > limit
        return list_view(items[:limit], has_more)

    async def delete(self, record: FileRecord) -> None:
        pipe = self._store.pipeline(transaction=False)
        pipe.delete(self._meta(record.id))
        pipe.zrem(self._index(None), record.id)
        if record.team is not None:
            pipe.zrem(self._index(record.team), record.id)
        await pipe.execute()
        await asyncio.to_thread(self.path(record.id).unlink, True)

    async def sweep(self, now: float) -> int:
        """Delete every file past its retention: bytes and metadata. Returns how many."""
        cutoff = (now - self.settings.retention_days * DAY) * 1000
        ids = [i.decode() for i in await self._store.client.zrangebyscore(self._index(None), "-inf", cutoff)]
        raws = await self._store.get_many([self._meta(i) for i in ids])
        for file_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                await self._store.client.zrem(self._index(None), file_id)
                continue
            await self.delete(FileRecord.model_validate_json(raw))
        return len(ids)
