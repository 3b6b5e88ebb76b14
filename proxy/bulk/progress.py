"""Progress of `embedgate embed`: a bar on a terminal (tqdm), plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, stream: TextIO = sys.stderr, every: float = 5.0) -> None:
        self._stream = stream
        self._every = every
        self._bar: Any = None
        self._total = self._done = self._sent = self._tokens = 0
        self._started = self._last = 0.0

    def start(self, total: int, done: int) -> None:
        self._total, self._done = total, done
        self._started = self._last = time.monotonic()
        if self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="rows", file=self._stream, dynamic_ncols=True)
        elif done:
            self._line(f"resuming: {done} of {total} rows already done")

    def advance(self, rows: int, tokens: int) -> None:
        self._done += rows
        self._sent += rows
        self._tokens += tokens
        now = time.monotonic()
        rate = self._tokens / (now - self._started) if now > self._started else 0.0
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix_str(f"{rate:.0f} tokens/s", refresh=False)
        elif now - self._last >= self._every or self._done == self._total:
            self._last = now
            rows_rate = self._sent / (now - self._started) if now > self._started else 0.0
            eta = (self._total - self._done) / rows_rate if rows_rate else 0.0
            self._line(f"rows {self._done}/{self._total} ({100 * self._done / max(1, self._total):.0f}%), "
                       f"{rate:.0f} tokens/s, ETA {eta:.0f}s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)
