"""Writing vectors: Parquet (id, vector as a fixed-size list of float32), `.npy` plus an ids file, or JSONL."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from proxy.bulk.sources import SourceError, pyarrow_parquet

Part = tuple[list[str], npt.NDArray[np.float32]]  # ids and their vectors, row for row


def ids_path(out: Path) -> Path:
    """The ids file beside an `.npy` output: one id per line, in the vectors' row order."""
    return out.with_suffix(".ids.txt")


def write_output(out: Path, parts: Iterable[Part]) -> int:
    """Write every part, in order, to `out` by its suffix (via a temporary file, so `out` is whole or
    absent); returns the rows written."""
    suffix = out.suffix.lower()
    tmp = out.with_name(out.name + ".tmp")
    if suffix == ".npy":
        ids, vectors = _concat(parts)
        with tmp.open("wb") as handle:
            np.save(handle, vectors)
        ids_path(out).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    elif suffix == ".parquet":
        ids, vectors = _concat(parts)
        _write_parquet(tmp, ids, vectors)
    elif suffix in (".jsonl", ".ndjson"):
        ids = []
        with tmp.open("wb") as handle:
            for part_ids, vectors in parts:
                ids += part_ids
                for row_id, vector in zip(part_ids, vectors, strict=True):
                    handle.write(orjson.dumps({"id": row_id, "embedding": vector},
                                              option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    else:
        raise SourceError(f"unknown output format {out.suffix!r}: use .parquet, .npy or .jsonl")
    tmp.replace(out)
    return len(ids)


def _concat(parts: Iterable[Part]) -> tuple[list[str], npt.NDArray[np.float32]]:
    ids: list[str] = []
    blocks = []
    for part_ids, vectors in parts:
        ids += part_ids
        blocks.append(vectors)
    return ids, (np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32))


def _write_parquet(path: Path, ids: list[str], vectors: npt.NDArray[np.float32]) -> None:
    pq = pyarrow_parquet()
    import pyarrow as pa

    width = vectors.shape[1] if vectors.ndim == 2 else 0
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), width)
    pq.write_table(pa.table({"id": pa.array(ids, type=pa.string()), "vector": column}), path)
