"""Gateway replicas as separate `embedgate serve` processes sharing one store, and a concurrent
client that fires a burst at them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from testkit.servers import GatewayProcess, write_config


@contextmanager
def replicas(config: dict[str, Any], directory: Path, count: int = 2) -> Iterator[list[GatewayProcess]]:
    path = write_config(config, directory / "replica.yaml")
    processes: list[GatewayProcess] = []
    try:
        for _ in range(count):
            processes.append(GatewayProcess(path))
        for process in processes:
            process.wait_ready(timeout=60)
        yield processes
    finally:
        for process in processes:
            process.stop()


async def _burst(urls: Sequence[str], key: str, body: dict[str, Any], n: int) -> Counter[tuple[int, str | None]]:
    async def one(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
        async with session.post(url + "/v1/embeddings", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as resp:
            data = await resp.json()
            return resp.status, None if resp.status == 200 else data["error"]["code"]

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        results = await asyncio.gather(*(one(session, urls[i % len(urls)]) for i in range(n)))
    return Counter(results)


def burst(urls: Sequence[str], key: str, body: dict[str, Any], n: int) -> Counter[tuple[int, str | None]]:
    """Send `n` identical requests at once, spread round-robin over `urls`; count (status, error code)."""
    return asyncio.run(_burst(urls, key, body, n))
