"""`embedgate embed`'s readers and writers: every input format in, every output format out."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proxy.bulk.sinks import ids_path, write_output
from proxy.bulk.sources import SourceError, read_rows

TEXTS = ["first text", "", "third, with a comma", "fourth \"quoted\""]


def test_jsonl_csv_parquet_and_text_lines_read_alike(tmp_path: Path) -> None:
    records = [{"id": f"doc-{n}", "body": t} for n, t in enumerate(TEXTS)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    with (tmp_path / "in.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "body"])
        writer.writeheader()
        writer.writerows(records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "in.parquet")
    for name in ("in.jsonl", "in.csv", "in.parquet"):
        rows = read_rows(tmp_path / name, "body")
        assert (rows.ids, rows.texts, rows.skipped_empty) == (["doc-0", "doc-2", "doc-3"],
                                                              [TEXTS[0], TEXTS[2], TEXTS[3]], 1), name
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    assert read_rows(tmp_path / "in.txt").ids == ["0", "2", "3"]  # line numbers


def test_a_missing_field_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 2, "content": "b"}\n')
    with pytest.raises(SourceError, match="row 1 has no field 'text'"):
        read_rows(tmp_path / "in.jsonl")


def test_parquet_npy_and_jsonl_outputs_hold_the_same_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = [(["a", "b"], rng.random((2, 8), dtype=np.float32)), (["c"], rng.random((1, 8), dtype=np.float32))]
    vectors = np.concatenate([v for _, v in parts])
    assert write_output(tmp_path / "out.parquet", iter(parts)) == 3
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 8)  # a fixed-size list
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    np.testing.assert_array_equal(np.asarray(table.column("vector").to_pylist(), dtype=np.float32), vectors)

    write_output(tmp_path / "out.npy", iter(parts))
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), vectors)
    assert ids_path(tmp_path / "out.npy").read_text().split() == ["a", "b", "c"]

    write_output(tmp_path / "out.jsonl", iter(parts))
    lines = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [line["id"] for line in lines] == ["a", "b", "c"]
    np.testing.assert_array_equal(np.asarray([line["embedding"] for line in lines], dtype=np.float32), vectors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ids.txt", "out.jsonl", "out.npy", "out.parquet"]
