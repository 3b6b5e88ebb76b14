"""OpenAI's Files and Batch API for /v1/embeddings, end to end with the official SDK, unchanged but for base_url."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.app import BATCH_WORKERS
from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import RedisServer
from testkit.servers import ThreadedServer
from tests.conftest import running_gateway, upstream_config
from tests.support.admin import MASTER_KEY, create_key, embed, put_team, ten_tokens
from tests.support.assertions import assert_openai_error
from tests.support.batches import (
    check_output,
    finished,
    jsonl,
    line,
    read_lines,
    start_batch,
    text_lines,
    wait_batch,
)
from tests.support.replicas import replicas
from tests.support.waiting import wait_until


def batch_config(fake: FakeOpenAI, tmp_path: Path, files: dict[str, Any] | None = None,
                 **batch: Any) -> dict[str, Any]:
    return upstream_config(fake, auth={"master_key": MASTER_KEY},
                           files={"dir": str(tmp_path / "files"), **(files or {})},
                           batch={"lease_seconds": 2, "poll_seconds": 0.05, **batch})


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


@pytest.fixture
def gateway(fake_openai: FakeOpenAI, tmp_path: Path) -> Iterator[ThreadedServer]:
    with running_gateway(batch_config(fake_openai, tmp_path, chunk_lines=500)) as server:
        yield server


def test_5000_lines_end_to_end_with_the_sdk(gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    api = client(gateway.url, create_key(gateway.url)["key"])
    items: list[dict[str, Any] | bytes] = []
    inputs: dict[str, Any] = {}
    dims: dict[str, int] = {}
    for i in range(5000):
        custom_id, text = f"row-{i}", f"row text number {i}"
        extra: dict[str, Any] = {}
        if i % 5 == 1:
            extra["encoding_format"] = "base64"
        if i % 7 == 2:
            extra["dimensions"] = dims[custom_id] = 16
        payload: Any = [text, text + " again"] if i % 11 == 3 else text
        inputs[custom_id] = payload
        items.append(line(custom_id, payload, **extra))
    bad = {
        "bad-model": (line("bad-model", "x", model="no-such-model"), 404),
        "bad-url": ({**line("bad-url", "x"), "url": "/v1/chat/completions"}, 400),
        "bad-empty": (line("bad-empty", ""), 400),
        "bad-dims": (line("bad-dims", "x", model="ada", dimensions=8), 400),
        "row-0": (line("row-0", "a second row-0"), 400),  # custom_id used twice: the later line fails
    }
    items += [entry for entry, _ in bad.values()] + [b"{this is not json"]

    batch = start_batch(api, items)
    assert batch.status == "validating" and batch.endpoint == "/v1/embeddings" and batch.completion_window == "24h"
    done = wait_batch(api, batch.id, finished)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5006, 5000, 6)
    assert done.completed_at and done.in_progress_at and done.finalizing_at and done.output_file_id

    output = read_lines(api, done.output_file_id)
    assert sorted(item["custom_id"] for item in output) == sorted(inputs)
    check_output(output, inputs, dims)
    errors = {item["custom_id"]: item["response"] for item in read_lines(api, done.error_file_id)}
    assert {cid: errors[cid]["status_code"] for cid in bad} == {cid: status for cid, (_, status) in bad.items()}
    assert errors[None]["body"]["error"]["code"] == "invalid_json"
    assert errors["bad-model"]["body"]["error"]["code"] == "model_not_found"
    # Many one-input lines became few large upstream calls.
    print(f"\n5000 lines → {len(fake_openai.received)} upstream calls")
    assert len(fake_openai.received) <= 40

    assert done.output_file_id in [f.id for f in api.files.list()]
    assert api.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert [b.id for b in api.batches.list()] == [batch.id]


def test_another_teams_key_gets_404_and_the_master_key_sees_all(gateway: ThreadedServer) -> None:
    owner = client(gateway.url, create_key(gateway.url, team="search")["key"])
    other = client(gateway.url, create_key(gateway.url, team="ads")["key"])
    master = client(gateway.url, MASTER_KEY)
    batch = wait_batch(owner, start_batch(owner, text_lines(3)).id, finished)
    assert batch.output_file_id is not None
    for call in (lambda: other.batches.retrieve(batch.id), lambda: other.batches.cancel(batch.id),
                 lambda: other.files.retrieve(batch.input_file_id),
                 lambda: other.files.content(batch.output_file_id), lambda: other.files.delete(batch.input_file_id),
                 lambda: other.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/embeddings",
                                              completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert exc.value.status_code == 404
    assert other.batches.list().data == [] and other.files.list().data == []
    assert master.batches.retrieve(batch.id).status == "completed"
    assert {batch.input_file_id, batch.output_file_id} <= {f.id for f in master.files.list()}
    assert len(read_lines(master, batch.output_file_id)) == 3


def test_cancel_mid_way_keeps_what_finished(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.delay = 0.2
    with running_gateway(batch_config(fake_openai, tmp_path, chunk_lines=10)) as server:
        api = client(server.url, create_key(server.url)["key"])
        items = text_lines(300)
        batch = start_batch(api, items)
        wait_batch(api, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 20)
        assert api.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        done = wait_batch(api, batch.id, finished)
        output = read_lines(api, done.output_file_id)
    assert done.status == "cancelled" and done.cancelling_at and done.cancelled_at
    assert done.request_counts is not None and 20 <= done.request_counts.completed < 300
    assert len(output) == done.request_counts.completed
    check_output(output, {item["custom_id"]: item["body"]["input"] for item in items})


def test_a_batch_uses_only_its_share_of_the_team_limits(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    with running_gateway(batch_config(fake_openai, tmp_path, chunk_lines=5, max_share=0.5)) as server:
        put_team(server.url, "search", limits={"tpm": 400})
        key = create_key(server.url)["key"]
        api = client(server.url, key)
        batch = start_batch(api, [line(f"ids-{i}", ten_tokens(i)) for i in range(30)])  # 10 tokens a line
        # Half of 400 tokens a minute: 20 lines, then the batch waits for its window to move on.
        wait_batch(api, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed == 20)
        interactive = [embed(server.url, key, input=ten_tokens(100 + i)).status_code for i in range(20)]
        assert interactive == [200] * 20  # the other half is the team's interactive traffic
        assert embed(server.url, key, input=ten_tokens(200)).status_code == 429  # and the team is now full
        waiting = api.batches.retrieve(batch.id)
        assert waiting.status == "in_progress" and waiting.request_counts is not None
        assert waiting.request_counts.completed == 20
        api.batches.cancel(batch.id)
        done = wait_batch(api, batch.id, finished)
        assert done.status == "cancelled"
        assert len(read_lines(api, done.output_file_id)) == 20


def test_an_unfinished_batch_expires_after_its_24h_window(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.delay = 0.2
    with running_gateway(batch_config(fake_openai, tmp_path, chunk_lines=10)) as server:
        api = client(server.url, create_key(server.url)["key"])
        batch = start_batch(api, text_lines(300))
        wait_batch(api, batch.id, lambda b: b.status == "in_progress")
        workers = server.app[BATCH_WORKERS] if server.app is not None else None
        assert workers is not None
        server.call(lambda: workers.sweep(time.time() + 23 * 3600))  # inside the window: untouched
        assert api.batches.retrieve(batch.id).status == "in_progress"
        server.call(lambda: workers.sweep(time.time() + 24 * 3600 + 1))
        done = wait_batch(api, batch.id, finished)
    assert done.status == "expired" and done.expired_at is not None
    assert done.request_counts is not None and done.request_counts.completed < 300


def test_uploads_and_batches_refused_with_clear_400s(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = batch_config(fake_openai, tmp_path, files={"max_bytes": 4000, "max_lines": 20})
    with running_gateway(config) as server:
        api = client(server.url, create_key(server.url)["key"])
        cases = [
            ((jsonl(text_lines(21)), "batch"), "file", "too_many_lines"),
            ((b"x" * 4001, "batch"), "file", "file_too_large"),
            ((jsonl(text_lines(2)), "fine-tune"), "purpose", "invalid_value"),
        ]
        for (data, purpose), param, code in cases:
            with pytest.raises(openai.BadRequestError) as exc:
                api.files.create(file=("in.jsonl", data), purpose=purpose)  # type: ignore[arg-type]
            assert_openai_error(exc, 400, param, code)
        uploaded = api.files.create(file=("in.jsonl", jsonl(text_lines(2))), purpose="batch")
        for fields, param in (({"endpoint": "/v1/chat/completions"}, "endpoint"),
                              ({"completion_window": "1h"}, "completion_window")):
            with pytest.raises(openai.BadRequestError) as exc:
                api.batches.create(**{"input_file_id": uploaded.id, "endpoint": "/v1/embeddings",
                                      "completion_window": "24h", **fields})
            assert_openai_error(exc, 400, param, "invalid_value")
        with pytest.raises(openai.NotFoundError):
            api.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")


def test_files_are_deleted_on_request_and_after_their_retention(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = batch_config(fake_openai, tmp_path, files={"retention_days": 2 / 86400}, sweep_seconds=0.2)
    with running_gateway(config) as server:
        api = client(server.url, create_key(server.url)["key"])
        first = api.files.create(file=("a.jsonl", jsonl(text_lines(2))), purpose="batch")
        deleted = api.files.delete(first.id)
        assert deleted.deleted and deleted.id == first.id
        with pytest.raises(openai.NotFoundError):
            api.files.retrieve(first.id)
        second = api.files.create(file=("b.jsonl", jsonl(text_lines(2))), purpose="batch")
        assert (tmp_path / "files" / second.id).exists()
        assert [f.id for f in api.files.list()] == [second.id]
        wait_until(lambda: second.id not in [f.id for f in api.files.list()])  # the sweep, past 2 s of retention
        with pytest.raises(openai.NotFoundError):
            api.files.retrieve(second.id)
        assert not (tmp_path / "files" / second.id).exists()


def test_a_replica_killed_mid_batch_loses_nothing(fake_openai: FakeOpenAI, redis_server: RedisServer,
                                                  tmp_path: Path) -> None:
    fake_openai.delay = 0.3
    config = batch_config(fake_openai, tmp_path, chunk_lines=10, lease_seconds=1)
    config["store"] = {"url": redis_server.url, "prefix": f"batch{secrets.token_hex(4)}"}
    with replicas(config, tmp_path) as (doomed, survivor):
        api = client(doomed.url, create_key(doomed.url)["key"])
        items = text_lines(400)
        batch = start_batch(api, items)
        midway = wait_batch(api, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 50)
        assert midway.request_counts is not None and midway.request_counts.completed < 400
        doomed.proc.kill()  # SIGKILL: its units in flight stay pending until their lease runs out
        doomed.proc.wait()
        pending = redis_server.client().xpending_range(f"{config['store']['prefix']}:batchwork", "workers",
                                                       "-", "+", 100)
        assert any(f"-{doomed.proc.pid}-" in entry["consumer"].decode() for entry in pending)  # it held work
        api = client(survivor.url, api.api_key)
        try:
            # Past the dispatcher's 120 s deadline: a call the kill left hanging upstream ends by then.
            done = wait_batch(api, batch.id, finished, timeout=150)
        except AssertionError as stuck:  # say where the work stands: what the stream still holds, and whose
            work = f"{config['store']['prefix']}:batchwork"
            left = redis_server.client().xpending_range(work, "workers", "-", "+", 100)
            raise AssertionError(f"{stuck}; stream length {redis_server.client().xlen(work)}, pending "
                                 f"{[(e['consumer'], e['time_since_delivered']) for e in left]}; "
                                 f"survivor log tail: {survivor.log()[-3000:]}") from None
        output = read_lines(api, done.output_file_id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (400, 0)
    assert sorted(item["custom_id"] for item in output) == sorted(item["custom_id"] for item in items)
    check_output(output, {item["custom_id"]: item["body"]["input"] for item in items})


def test_a_malformed_multipart_upload_is_a_400(gateway: ThreadedServer) -> None:
    """Found by the contract fuzzer: a part header that is not valid HTTP made aiohttp raise, a 500."""
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="\xc3\x86\x0e"\r\n\r\nx\r\n--{boundary}--\r\n'
            ).encode("latin-1")
    for content_type in (f"multipart/form-data; boundary={boundary}", "multipart/form-data"):
        resp = httpx.post(gateway.url + "/v1/files", content=body, headers={
            "Content-Type": content_type, "Authorization": f"Bearer {create_key(gateway.url)['key']}"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_multipart"
