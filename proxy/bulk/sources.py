"""Reading a corpus: JSONL, CSV, Parquet or plain text lines, as (id, text) rows in file order."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


class SourceError(ValueError):
    """The input cannot be read as asked (missing field, unknown format); the message says how."""


@dataclass(frozen=True, slots=True)
class Rows:
    ids: list[str]
    texts: list[str]
    skipped_empty: int  # rows whose text is empty: OpenAI refuses empty strings, so they are left out


def read_rows(path: Path, text_field: str = "text", id_field: str = "id") -> Rows:
    """Rows of `path` by its suffix; a row without `id_field` is named by its 0-based row number."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            records = list(csv.DictReader(handle))
    elif suffix == ".parquet":
        records = _parquet(path, text_field, id_field)
    else:  # plain text: one input per line, named by its line number
        lines = path.read_text(encoding="utf-8").splitlines()
        return _rows([(str(n), line) for n, line in enumerate(lines)])
    pairs = []
    for n, record in enumerate(records):
        if not isinstance(record, dict) or text_field not in record:
            raise SourceError(f"{path}: row {n} has no field {text_field!r} (choose one with --field)")
        text = record[text_field]
        if not isinstance(text, str):
            raise SourceError(f"{path}: row {n}: field {text_field!r} is not a string")
        pairs.append((str(record.get(id_field, n)), text))
    return _rows(pairs)


def _rows(pairs: list[tuple[str, str]]) -> Rows:
    kept = [(i, t) for i, t in pairs if t]
    return Rows([i for i, _ in kept], [t for _, t in kept], len(pairs) - len(kept))


def _parquet(path: Path, text_field: str, id_field: str) -> list[dict[str, object]]:
    pq = pyarrow_parquet()
    schema = pq.read_schema(path)
    columns = [c for c in (text_field, id_field) if c in schema.names]
    return list(pq.read_table(path, columns=columns).to_pylist())


def pyarrow_parquet() -> Any:
    """`pyarrow.parquet`, or a clear error naming the extra that brings it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise SourceError("Parquet needs pyarrow: pip install 'embedgate[bulk]'") from err
    return pq
