"""`embedgate embed` as a user runs it: a subprocess against a running gateway (and straight against an
OpenAI-compatible server), checked row by row against the fake upstream's known vectors."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from testkit.openai_upstream import FakeOpenAI, expected_vector
from testkit.servers import ROOT, ThreadedServer
from tests.conftest import start_gateway, upstream_settings
from tests.support.cli import run_cli
from tests.support.http import embed_ok

MODEL = "text-embedding-3-small"
ROWS = 3000


@pytest.fixture
def gateway(fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    server = start_gateway(upstream_settings(fake_openai))
    yield server
    server.stop()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"doc-{n}", "text": f"passage {n} of the corpus"}) + b"\n"
                              for n in range(ROWS)))
    return path


def embed_args(corpus: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["embed", str(corpus), "--model", MODEL, "--out", str(out), "--url", url + "/v1",
            "--batch-size", "100", *extra]


def read_parquet(path: Path) -> tuple[list[str], np.ndarray]:  # type: ignore[type-arg]
    table = pq.read_table(path)
    return table.column("id").to_pylist(), np.asarray(table.column("vector").to_pylist(), dtype=np.float32)


def test_a_corpus_becomes_parquet_row_for_row(gateway: ThreadedServer, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "vectors.parquet"
    result = run_cli(*embed_args(corpus, out, gateway.url))
    assert result.returncode == 0, result.stderr
    ids, vectors = read_parquet(out)
    assert ids == [f"doc-{n}" for n in range(ROWS)]
    np.testing.assert_allclose(vectors, [expected_vector(f"passage {n} of the corpus") for n in range(ROWS)],
                               rtol=1e-6, atol=1e-7)
    assert f"rows: {ROWS} ({ROWS} sent now" in result.stderr and "cache: miss 3000 rows" in result.stderr
    assert not out.with_name(out.name + ".partial").exists()  # the checkpoint is gone once the output is whole


def test_interrupted_then_resumed_output_is_identical(fake_openai: FakeOpenAI, gateway: ThreadedServer,
                                                      corpus: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.npy"
    assert run_cli(*embed_args(corpus, whole, gateway.url)).returncode == 0

    fake_openai.delay = 0.05  # slow enough to stop it half-way
    resumed = tmp_path / "resumed.npy"
    checkpoint = tmp_path / "resumed.npy.partial"
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *embed_args(corpus, resumed, gateway.url,
                                                                        "--concurrency", "1")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(checkpoint.glob("chunk-*.npz"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # as a crash: no chance to clean up
    proc.wait()
    done = len(list(checkpoint.glob("chunk-*.npz")))
    assert 5 <= done < ROWS // 100 and not resumed.exists()

    fake_openai.delay = 0.0
    sent_before = len(fake_openai.inputs_seen)
    result = run_cli(*embed_args(corpus, resumed, gateway.url))
    assert result.returncode == 0, result.stderr
    assert len(fake_openai.inputs_seen) - sent_before <= ROWS - done * 100  # the done chunks were not sent again
    assert resumed.read_bytes() == whole.read_bytes()
    assert resumed.with_suffix(".ids.txt").read_bytes() == whole.with_suffix(".ids.txt").read_bytes()


def test_straight_to_an_openai_compatible_server_with_retries(fake_openai: FakeOpenAI, corpus: Path,
                                                               tmp_path: Path) -> None:
    fake_openai.fail_next(429, headers={"Retry-After": "0"})
    fake_openai.fail_next(500)
    out = tmp_path / "vectors.jsonl"
    result = run_cli("embed", str(corpus), "--model", MODEL, "--out", str(out), "--url", fake_openai.url,
                     "--batch-size", "500", env={"OPENAI_API_KEY": fake_openai.api_key})
    assert result.returncode == 0, result.stderr
    assert "retries: 2" in result.stderr
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["id"] for line in lines] == [f"doc-{n}" for n in range(ROWS)]
    np.testing.assert_allclose(lines[1234]["embedding"], expected_vector("passage 1234 of the corpus"), rtol=1e-6)


def test_a_refused_batch_stops_with_the_servers_message(gateway: ThreadedServer, tmp_path: Path) -> None:
    corpus = tmp_path / "lines.txt"
    corpus.write_text("a line\nanother line\n")
    result = run_cli("embed", str(corpus), "--model", "no-such-model", "--url", gateway.url + "/v1")
    assert result.returncode == 1
    assert "404" in result.stderr and "no-such-model" in result.stderr and "Traceback" not in result.stderr


def test_local_runs_the_bundled_model_in_process(local_gateway: ThreadedServer, tmp_path: Path) -> None:
    texts = [f"a sentence about topic {n}" for n in range(40)]
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(texts) + "\n")
    out = tmp_path / "local.parquet"
    result = run_cli("embed", str(corpus), "--model", "all-MiniLM-L6-v2", "--out", str(out), "--local",
                     "--batch-size", "16")
    assert result.returncode == 0, result.stderr
    ids, vectors = read_parquet(out)
    served = embed_ok(local_gateway.url, texts, model="all-MiniLM-L6-v2", encoding_format="float")
    assert ids == [str(n) for n in range(40)] and vectors.shape == (40, 384)
    np.testing.assert_allclose(vectors, np.stack(served.vectors), rtol=1e-4, atol=1e-5)  # the server's vectors
