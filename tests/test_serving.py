"""`embedgate serve` as a process: several workers on one port with exact metrics, and a graceful drain on
SIGTERM (readiness turns 503, the listener stays open for the grace period, nothing accepted is cut off)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from testkit.openai_upstream import FakeOpenAI, expected_vector
from testkit.servers import child_pids as children
from testkit.servers import gateway_process as serving
from tests.conftest import upstream_config
from tests.support.metrics import scrape, series

DRAIN = {"drain_grace": 1.5, "drain_timeout": 10}


def requests_counted(url: str) -> float:
    return sum(series(scrape(url), "embedgate_requests_total").values())


async def _concurrent(url: str, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one(body: dict[str, Any]) -> tuple[int, Any]:
            async with session.post(url + "/v1/embeddings", json=body) as resp:
                return resp.status, await resp.json()
        return await asyncio.gather(*(one(b) for b in bodies))


def test_two_workers_share_one_port_and_metrics_stay_exact(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = upstream_config(fake_openai, server={"drain_grace": 0, "drain_timeout": 10})
    with serving(config, tmp_path, None, "--workers", "2") as gateway:
        assert len(children(gateway.proc.pid)) >= 2  # two worker processes under the supervisor
        bodies = [{"model": "text-embedding-3-small", "input": f"w {i}"} for i in range(40)]
        results = asyncio.run(_concurrent(gateway.url, bodies))
        assert [status for status, _ in results] == [200] * 40
        # Each scrape lands on either worker; each must count all 40 requests, whichever served them.
        assert {requests_counted(gateway.url) for _ in range(6)} == {40.0}
        pids = children(gateway.proc.pid)
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids):  # every worker went with the supervisor
        assert time.monotonic() < deadline, f"left running: {pids}"
        time.sleep(0.1)


def test_sigterm_drains_every_accepted_request(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.delay = 1.0  # every request is still in flight when SIGTERM arrives
    config = upstream_config(fake_openai, server=DRAIN, cache={"enabled": False})
    with serving(config, tmp_path) as gateway:
        bodies = [{"model": "text-embedding-3-small", "input": f"in flight {i}"} for i in range(16)]

        async def scenario() -> tuple[list[tuple[int, Any]], int, list[tuple[int, Any]]]:
            in_flight = asyncio.ensure_future(_concurrent(gateway.url, bodies))
            await asyncio.sleep(0.3)
            gateway.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with aiohttp.ClientSession() as session, session.get(gateway.url + "/readyz") as ready:
                readiness = ready.status
            late = await _concurrent(gateway.url, [{"model": "text-embedding-3-small", "input": "late"}])
            return await in_flight, readiness, late

        served, readiness, late = asyncio.run(scenario())
        assert readiness == 503  # load balancers are told to stop sending...
        assert late[0][0] == 200  # ...while the listener stays open for the grace period
        for body, (status, answer) in zip(bodies, served, strict=True):
            assert status == 200
            vector = np.asarray(answer["data"][0]["embedding"], dtype=np.float32)
            np.testing.assert_array_equal(vector, expected_vector(body["input"]).astype(np.float32))
        # Exits on its own once drained: the wait's bound is the configured grace plus drain timeout.
        assert gateway.proc.wait(timeout=DRAIN["drain_grace"] + DRAIN["drain_timeout"] + 5) == 0
