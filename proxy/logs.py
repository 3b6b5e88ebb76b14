"""Logging: one line per record on stderr, as text or JSON (`embedgate serve --log-format text|json`).

A record may carry `extra={"fields": {...}}`: text lines append them as `key=value`, JSON lines merge them
into the object. The per-request line (proxy/observe.py) is built that way, and only when its level is on;
where logging is as `configure` left it, that line is formatted straight into the handler with no record
(`direct_handler`), the same text at about half the cost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Literal, cast

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
        return f"{self._time(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) + _text_fields(getattr(record, "fields", None))

    def line(self, name: str, level: int, created: float, message: str, fields: dict[str, object]) -> str:
        """What `format` makes of a plain record (no arguments, no exception) made at `created`."""
        return (f"{self._time(created)},{int(created % 1 * 1000):03d} {logging.getLevelName(level)} {name}: "
                f"{message}{_text_fields(fields)}")

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime(self.default_time_format, self.converter(second))
        return self._stamp


def _text_fields(fields: dict[str, object] | None) -> str:
    return " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items()) if fields else ""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _json_entry(record.name, record.levelname, record.created, int(record.msecs), record.getMessage(),
                            getattr(record, "fields", None))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def line(self, name: str, level: int, created: float, message: str, fields: dict[str, object]) -> str:
        """What `format` makes of a plain record (no arguments, no exception) made at `created`."""
        entry = _json_entry(name, logging.getLevelName(level), created, int(created % 1 * 1000), message, fields)
        return orjson.dumps(entry, default=str).decode()


def _json_entry(name: str, level: str, created: float, msecs: int, message: str,
                fields: dict[str, object] | None) -> dict[str, object]:
    entry: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z",
        "level": level,
        "logger": name,
        "msg": message,
    }
    if fields:
        entry.update(fields)
    return entry


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
            self._schedule()
        except RecursionError:
            raise
        except Exception:  # as StreamHandler does: a bad record or a closed stream is reported, never raised
            self._pending.clear()
            self.handleError(record)

    def emit_lines(self, lines: list[str]) -> None:
        """Lines formatted without a record (`direct_handler`), written as emitted records' lines are."""
        with self.lock:  # type: ignore[union-attr]
            self._pending += [line + self.terminator for line in lines]
            try:
                self._schedule()
            except (OSError, ValueError):  # as `flush`: stderr closed or broken
                self._pending.clear()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        if self._flushing is not loop:  # another loop's flush may never run: that loop may be closing
            self._flushing = loop
            loop.call_soon(self.flush)

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


LineFormatter = TextFormatter | JsonFormatter


def direct_handler(logger: logging.Logger, level: int) -> tuple[TurnHandler, LineFormatter] | None:
    """The handler, and its formatter, that a record of `logger` at `level` would reach, where that is the one
    `configure` set up and nothing on the way filters: then a line may be formatted and handed to it with no
    record made (proxy/observe.py `AccessLog`, one line per request). None where logging's own path is needed:
    another handler or a filter anywhere (a test's capture, an operator's set-up), or the level off."""
    if logger.disabled or logger.filters or not logger.isEnabledFor(level):
        return None
    found: tuple[TurnHandler, LineFormatter] | None = None
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            formatter = handler.formatter
            # Exactly ours: a subclass may format otherwise.
            if (found is not None or type(handler) is not TurnHandler or handler.filters or level < handler.level
                    or type(formatter) not in (TextFormatter, JsonFormatter)):
                return None
            found = handler, cast(LineFormatter, formatter)
        node = node.parent if node.propagate else None
    return found
