"""Logging: one line per record on stderr, as text or JSON (`embedgate serve --log-format text|json`).

A record may carry `extra={"fields": {...}}`: text lines append them as `key=value`, JSON lines merge them
into the object. The per-request line (proxy/observe.py) is built that way, and only when its level is on.
"""

from __future__ import annotations

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


def configure(options: LogOptions) -> None:
    """The root logger writes to stderr in the chosen format, at the chosen level (replacing any handler)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if options.format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(options.level)
    logging.captureWarnings(True)  # in the same format, not as bare stderr text
