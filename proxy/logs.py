"""Logging: one line per record on stderr, as text or JSON (`embedgate serve --log-format text|json`).

A record may carry `extra={"fields": {...}}`: text lines append them as `key=value`, JSON lines merge them
into the object. The per-request line (proxy/observe.py) is built that way, and only when its level is on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Literal

import orjson

Format = Literal["text", "json"]
FORMATS: tuple[Format, ...] = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class LogOptions:
    level: str = "INFO"
    format: Format = "text"

    @classmethod
    def resolve(cls, level: str | None = None, format: str | None = None) -> LogOptions:
        """Flags win, then $EMBEDGATE_LOG_LEVEL / $EMBEDGATE_LOG_FORMAT, then INFO and text."""
        chosen_level = (level or os.environ.get("EMBEDGATE_LOG_LEVEL") or "INFO").upper()
        chosen_format = (format or os.environ.get("EMBEDGATE_LOG_FORMAT") or "text").lower()
        if chosen_level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {chosen_level!r}")
        if chosen_format not in FORMATS:
            raise ValueError(f"log format must be text or json, got {chosen_format!r}")
        return cls(chosen_level, "json" if chosen_format == "json" else "text")


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _text_value(value: object) -> str:
    if not isinstance(value, str):
        return str(value)
    if not value or _NEEDS_QUOTES.search(value):
        return orjson.dumps(value).decode()
    return value


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The same text as logging's default, its strftime made once per second instead of once per line.
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime(self.default_time_format, self.converter(second))
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, written once per turn of the event loop: the lines one turn logs (a request's line among them)
    go out in one write, after the answers that turn sent, where a write per line was a system call on
    every request's path. A line logged where no loop runs (start-up, a worker thread) is written at once."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._flushing: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def emit(self, record: logging.LogRecord) -> None:  # called under the handler's lock
        try:
            self._pending.append(self.format(record) + self.terminator)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write()
                return
            if self._flushing is not loop:  # another loop's flush may never run: that loop may be closing
                self._flushing = loop
                loop.call_soon(self.flush)
        except RecursionError:
            raise
        except Exception:  # as StreamHandler does: a bad record or a closed stream is reported, never raised
            self._pending.clear()
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                self._write()
            except (OSError, ValueError):  # stderr closed or broken: the lines have nowhere to go
                self._pending.clear()

    def _write(self) -> None:
        self._flushing = None
        if self._pending:
            lines, self._pending = "".join(self._pending), []
            self.stream.write(lines)
        self.stream.flush()


def configure(options: LogOptions) -> None:
    """The root logger writes to stderr in the chosen format, at the chosen level (replacing any handler)."""
    handler = TurnHandler()
    handler.setFormatter(JsonFormatter() if options.format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(options.level)
    logging.captureWarnings(True)  # in the same format, not as bare stderr text
