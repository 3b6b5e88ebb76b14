"""A soak: steady load through two replicas for a long while, with trouble on the way.

Two `embedgate serve` processes share one Redis of our own (AOF on); the fake OpenAI upstream
fails a few percent of calls at random (the dispatcher retries them); half-way through, Redis is
restarted. The load generator counts what it was served. At the end it prints requests served,
errors by kind, each replica's resident memory after warm-up, in the middle and at the end, and it
checks that:
- usage in Redis (`GET /admin/usage`) equals the requests the load generator saw served (within the
  stated bound: a store call in flight at the instant Redis stops may count twice, README "Running Redis");
- memory stays flat: each replica's RSS at the end is within 10 % of its RSS after warm-up.

`make soak` (SOAK_SECONDS, default 600). Writes bench/results/soak.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import RedisServer
from testkit.servers import GatewayProcess, ThreadedServer

RESULTS = Path(__file__).parent / "results" / "soak.json"
MODEL = "text-embedding-3-small"
MASTER_KEY = "mk-soak-master-key-0123456789"
TEAM = "soak"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Load:
    """`clients` coroutines sending requests back to back, alternating replicas; half the inputs repeat
    (cache hits), half are new."""

    def __init__(self, urls: list[str], key: str, clients: int) -> None:
        self.urls, self.key, self.clients = urls, key, clients
        self.statuses: Counter[str] = Counter()
        self.served = 0

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
            await asyncio.gather(*(self._client(session, n, deadline) for n in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession, n: int, deadline: float) -> None:
        i = 0
        while time.monotonic() < deadline:
            url = self.urls[(n + i) % len(self.urls)] + "/v1/embeddings"
            inputs = [f"repeated text {i % 50}", f"client {n} new text {i}"]
            try:
                async with session.post(url, json={"model": MODEL, "input": inputs}) as resp:
                    body = await resp.json()
                    kind = "200" if resp.status == 200 else f"{resp.status} {body['error']['code']}"
            except aiohttp.ClientError as err:
                kind = f"connection {type(err).__name__}"
            self.statuses[kind] += 1
            self.served += kind == "200"
            i += 1


async def usage_requests(url: str) -> int:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {MASTER_KEY}"}) as session, \
            session.get(f"{url}/admin/usage", params={"team": TEAM}) as resp:
        return int((await resp.json())["total"]["requests"])


async def create_key(url: str) -> str:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {MASTER_KEY}"}) as session, \
            session.post(f"{url}/admin/keys", json={"team": TEAM}) as resp:
        return str((await resp.json())["key"])


async def soak(replicas: list[GatewayProcess], redis: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    urls = [r.url for r in replicas]
    load = Load(urls, await create_key(urls[0]), args.clients)
    memory: dict[str, list[float]] = {r.url: [] for r in replicas}
    warm_up = min(30.0, args.seconds * 0.1)

    async def trouble() -> None:
        await asyncio.sleep(warm_up)
        for r in replicas:
            memory[r.url].append(rss_mib(r.proc.pid))
        await asyncio.sleep(args.seconds / 2 - warm_up)
        for r in replicas:
            memory[r.url].append(rss_mib(r.proc.pid))
        await asyncio.to_thread(redis.stop)  # SIGTERM: Redis writes its AOF and exits
        await asyncio.sleep(args.outage)
        await asyncio.to_thread(redis.start)

    await asyncio.gather(load.run(args.seconds), trouble())
    for r in replicas:
        memory[r.url].append(rss_mib(r.proc.pid))
    for _ in range(60):  # the ledger flushes within a second or so of Redis answering again
        recorded = await usage_requests(urls[0])
        if recorded == load.served:
            break
        await asyncio.sleep(0.5)
    growth = {url: round(rss[-1] / rss[0] - 1, 3) for url, rss in memory.items()}
    checks = {
        "usage_matches_served": 0 <= recorded - load.served <= args.clients,
        "memory_flat_within_10pct": all(g <= 0.10 for g in growth.values()),
    }
    return {"seconds": args.seconds, "clients": args.clients, "upstream_failure_rate": args.failure_rate,
            "redis_outage_seconds": args.outage, "served": load.served, "usage_recorded": recorded,
            "by_status": dict(load.statuses), "rss_mib_warm_middle_end": memory, "rss_growth": growth,
            "checks": checks}


def run(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeOpenAI(delay=args.delay, failure_rate=args.failure_rate)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="embedgate-soak-") as tmp:
        redis = RedisServer(extra_args=("--appendonly", "yes")).start()
        stack.callback(redis.stop)
        upstream = ThreadedServer(fake.app).start()
        stack.callback(upstream.stop)
        config = Path(tmp) / "soak.yaml"
        config.write_text(yaml.safe_dump({
            "auth": {"master_key": MASTER_KEY},
            "store": {"url": redis.url, "prefix": "soak", "timeout": 0.5, "spill_dir": f"{tmp}/spill"},
            "server": {"drain_grace": 0},
            "models": [{"name": MODEL, "provider": "openai", "api_base": f"{upstream.url}/v1",
                        "api_key": fake.api_key, "dimensions": fake.dims}],
        }))
        replicas = [GatewayProcess(config) for _ in range(2)]
        for replica in replicas:
            stack.callback(replica.stop)
            replica.wait_ready(timeout=60)
        return asyncio.run(soak(replicas, redis, args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--failure-rate", type=float, default=0.03, help="share of upstream calls that fail")
    parser.add_argument("--delay", type=float, default=0.005, help="fake upstream delay, seconds")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    failed = [name for name, ok in report["checks"].items() if not ok]
    print(f"wrote {args.output}; " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
