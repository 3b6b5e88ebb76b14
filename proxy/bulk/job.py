"""A corpus embedded in fixed chunks, resumable: each finished chunk is a file in a checkpoint directory
beside the output (`OUT.partial/`), written whole or not at all. Run again with the same arguments, the
chunks already there are kept and the rest are sent; the output is assembled in row order at the end,
so it is identical to an uninterrupted run's."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from proxy.bulk.progress import Progress
from proxy.bulk.sinks import Part, write_output
from proxy.bulk.sources import Rows
from proxy.bulk.transport import Transport


class ResumeMismatch(ValueError):
    """A checkpoint from a run with other arguments or another input: resuming would mix them."""


@dataclass
class Summary:
    rows: int = 0
    rows_sent: int = 0  # this run; the rest came from the checkpoint
    tokens: int = 0
    seconds: float = 0.0
    cache: dict[str, int] = field(default_factory=dict)  # rows by x-embedgate-cache, where the server said
    retries: int = 0
    skipped_empty: int = 0

    def lines(self) -> list[str]:
        rate = self.rows_sent / self.seconds if self.seconds else 0.0
        out = [f"rows: {self.rows} ({self.rows_sent} sent now, {self.rows - self.rows_sent} from the checkpoint)",
               f"tokens: {self.tokens}", f"time: {self.seconds:.1f} s, {rate:.1f} rows/s, "
               f"{self.tokens / self.seconds if self.seconds else 0.0:.1f} tokens/s"]
        if self.cache:
            out.append("cache: " + ", ".join(f"{k} {v} rows" for k, v in sorted(self.cache.items())))
        if self.retries:
            out.append(f"retries: {self.retries}")
        if self.skipped_empty:
            out.append(f"skipped: {self.skipped_empty} empty rows")
        return out


class Checkpoint:
    def __init__(self, out: Path, fingerprint: str) -> None:
        self.dir = out.with_name(out.name + ".partial")
        manifest = self.dir / "manifest.json"
        if manifest.exists():
            if orjson.loads(manifest.read_bytes()).get("fingerprint") != fingerprint:
                raise ResumeMismatch(f"{self.dir} holds a run with other arguments or another input; "
                                     "remove it to start over")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            manifest.write_bytes(orjson.dumps({"fingerprint": fingerprint}))

    def path(self, chunk: int) -> Path:
        return self.dir / f"chunk-{chunk:08d}.npz"

    def done(self, chunk: int) -> bool:
        return self.path(chunk).exists()

    def save(self, chunk: int, ids: list[str], vectors: npt.NDArray[np.float32]) -> None:
        tmp = self.dir / f".chunk-{chunk:08d}.tmp.npz"
        np.savez(tmp, ids=np.asarray(ids, dtype=str), vectors=vectors)
        tmp.replace(self.path(chunk))

    def load(self, chunk: int) -> Part:
        with np.load(self.path(chunk)) as data:
            return [str(i) for i in data["ids"]], data["vectors"]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def fingerprint(rows: Rows, *settings: object) -> str:
    """Of the input's rows and every argument that changes the vectors or the chunking."""
    digest = hashlib.blake2b(orjson.dumps([str(s) for s in settings]), digest_size=16)
    for row_id, text in zip(rows.ids, rows.texts, strict=True):
        digest.update(orjson.dumps([row_id, text]))
    return digest.hexdigest()


def chunks(count: int, size: int) -> Iterator[tuple[int, int, int]]:
    for number, start in enumerate(range(0, count, size)):
        yield number, start, min(start + size, count)


async def run_job(rows: Rows, out: Path, transport: Transport, checkpoint: Checkpoint, *, batch_size: int,
                  concurrency: int, progress: Progress) -> Summary:
    summary = Summary(rows=len(rows.ids), skipped_empty=rows.skipped_empty)
    started = time.monotonic()
    todo = [c for c in chunks(len(rows.ids), batch_size) if not checkpoint.done(c[0])]
    progress.start(total=len(rows.ids), done=len(rows.ids) - sum(end - start for _, start, end in todo))
    queue = iter(todo)

    async def worker() -> None:
        for number, start, end in queue:
            answer = await transport.embed(rows.texts[start:end])
            checkpoint.save(number, rows.ids[start:end], answer.vectors)
            summary.rows_sent += end - start
            summary.tokens += answer.tokens
            if answer.cache:
                summary.cache[answer.cache] = summary.cache.get(answer.cache, 0) + end - start
            progress.advance(end - start, answer.tokens)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        progress.close()
    numbers = [number for number, _, _ in chunks(len(rows.ids), batch_size)]
    write_output(out, (checkpoint.load(n) for n in numbers))
    checkpoint.remove()
    summary.seconds = time.monotonic() - started
    summary.retries = getattr(transport, "retries", 0)
    return summary
