"""The shipped HAProxy config in front of two real gateway processes: while one drains after SIGTERM, HAProxy
takes it out on its /readyz before its port closes, the other serves everything after, and no request fails."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from testkit.openai_upstream import FakeOpenAI
from testkit.servers import GatewayProcess
from tests.support.haproxy import HAPROXY, HAPROXY_CFG, NO_HAPROXY_REASON, HAProxy, check_config

pytestmark = pytest.mark.skipif(HAPROXY is None, reason=NO_HAPROXY_REASON)
MODEL = "text-embedding-3-small"
GRACE = 2.0


def replica_config(fake: FakeOpenAI, name: str) -> dict[str, Any]:
    """A replica whose one deployment is named after it, so `x-embedgate-deployment` says who answered."""
    return {
        "server": {"drain_grace": GRACE, "drain_timeout": 5},
        "cache": {"enabled": False},  # every request goes to a replica's deployment
        "models": [{"name": MODEL, "dimensions": fake.dims, "deployments": [
            {"provider": "openai", "name": name, "api_base": fake.url, "api_key": fake.api_key}]}],
    }


@contextmanager
def replicas_behind_haproxy(fake: FakeOpenAI, directory: Path) -> Iterator[tuple[HAProxy, dict[str, GatewayProcess]]]:
    gateways: dict[str, GatewayProcess] = {}
    balancer: HAProxy | None = None
    try:
        for name in ("embedgate-a", "embedgate-b"):
            path = directory / f"{name}.yaml"
            path.write_text(yaml.safe_dump(replica_config(fake, name)))
            gateways[name] = GatewayProcess(path)
        for gateway in gateways.values():
            gateway.wait_ready(timeout=60)
        balancer = HAProxy({name: gateway.port for name, gateway in gateways.items()}).start()
        balancer.wait_until({"embedgate-a": "UP", "embedgate-b": "UP"})
        yield balancer, gateways
    finally:
        if balancer is not None:
            balancer.stop()
        for gateway in gateways.values():
            gateway.stop()


@dataclass(frozen=True)
class Sent:
    at: float
    status: int
    served_by: str | None


async def client_loop(url: str, stop: asyncio.Event, log: list[Sent]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        i = 0
        while not stop.is_set():
            at = time.monotonic()
            async with session.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": f"lb {i}"}) as r:
                await r.read()
                log.append(Sent(at, r.status, r.headers.get("x-embedgate-deployment")))
            i += 1


async def drain_one_under_load(balancer: HAProxy, draining: GatewayProcess) -> tuple[list[Sent], float, float, float]:
    """Steady traffic through HAProxy; SIGTERM one replica. Returns (requests, SIGTERM time, time HAProxy was seen
    to mark it DOWN, time its process was seen gone)."""
    stop = asyncio.Event()
    log: list[Sent] = []
    clients = [asyncio.create_task(client_loop(balancer.url, stop, log)) for _ in range(4)]
    await asyncio.sleep(0.5)
    sigterm = time.monotonic()
    draining.proc.send_signal(signal.SIGTERM)
    down = gone = None
    while gone is None:
        await asyncio.sleep(0.02)
        if down is None and (await asyncio.to_thread(balancer.states))["embedgate-a"] == "DOWN":
            down = time.monotonic()
        if draining.proc.poll() is not None:
            gone = time.monotonic()
        assert time.monotonic() - sigterm < 30, "the replica did not exit"
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    assert down is not None, "HAProxy never marked the draining replica DOWN while it was running"
    return log, sigterm, down, gone


def test_the_shipped_config_is_valid() -> None:
    result = check_config(HAPROXY_CFG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_draining_replica_leaves_haproxy_before_its_port_closes_and_no_request_fails(
        fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    with replicas_behind_haproxy(fake_openai, tmp_path) as (balancer, gateways):
        log, sigterm, down, gone = asyncio.run(drain_one_under_load(balancer, gateways["embedgate-a"]))
        assert gateways["embedgate-a"].proc.returncode == 0
        assert down - sigterm < GRACE <= gone - sigterm  # out on /readyz, well before the listener closed
        assert [sent for sent in log if sent.status != 200] == []
        assert {sent.served_by for sent in log if sent.at < sigterm} == {"embedgate-a", "embedgate-b"}
        after = [sent.served_by for sent in log if sent.at > down]
        assert after and set(after) == {"embedgate-b"}
        # Metrics stay off the public port: Prometheus scrapes each replica itself.
        assert asyncio.run(_status(f"{balancer.url}/metrics")) == 404


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status
