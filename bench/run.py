"""Cache-hit latency next to cache-miss latency.

A real gateway (`python -m proxy serve`, a separate process) in front of the fake OpenAI
upstream, which answers after a fixed delay like a remote vendor would. For each store
(memory://, and a Redis of our own when redis-server is installed) it measures, with
requests of `--inputs` distinct texts:

- miss:    texts never seen, so every input goes upstream;
- partial: half the texts cached, half new;
- hit:     the miss phase's requests again, every input from the cache;

each sequentially (latency p50/p95) and then with `--concurrency` clients (throughput).
Ratios are against the miss phase of the same run. Writes bench/results/cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import REDIS_SERVER, RedisServer
from testkit.servers import GatewayProcess, ThreadedServer

RESULTS = Path(__file__).parent / "results" / "cache.json"
MODEL = "text-embedding-3-small"


@dataclass
class Phase:
    store: str
    phase: str
    requests: int
    p50_ms: float
    p95_ms: float
    throughput_rps: float  # with `concurrency` clients
    inputs_per_s: float


class Texts:
    """Fresh texts on demand, so a miss is a miss; remembered, so a hit can ask for them again."""

    def __init__(self, run_id: str) -> None:
        self._numbers = itertools.count()
        self._run = run_id

    def batch(self, size: int) -> list[str]:
        return [f"benchmark {self._run} text number {next(self._numbers)} about embeddings"
                for _ in range(size)]


async def timed_post(session: aiohttp.ClientSession, url: str, inputs: list[str], expect: str) -> float:
    started = time.perf_counter()
    async with session.post(url, json={"model": MODEL, "input": inputs, "encoding_format": "base64"}) as resp:
        await resp.read()
        elapsed = time.perf_counter() - started
        status = resp.headers.get("x-embedgate-cache")
        if resp.status != 200 or status != expect:
            raise RuntimeError(f"expected a 200 {expect}, got {resp.status} {status}")
    return elapsed


async def sequential(session: aiohttp.ClientSession, url: str, batches: list[list[str]], expect: str) -> list[float]:
    return [await timed_post(session, url, batch, expect) for batch in batches]


async def concurrent(session: aiohttp.ClientSession, url: str, batches: list[list[str]], expect: str,
                     concurrency: int) -> float:
    """Seconds to send every batch with `concurrency` clients."""
    queue = iter(batches)

    async def client() -> None:
        for batch in queue:
            await timed_post(session, url, batch, expect)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


def phase_result(store: str, name: str, latencies: list[float], wall: float, count: int, inputs: int) -> Phase:
    ms = np.asarray(latencies) * 1000
    return Phase(store, name, count, round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 95)), 2),
                 round(count / wall, 1), round(count * inputs / wall, 1))


async def measure(url: str, store: str, args: argparse.Namespace) -> list[Phase]:
    endpoint = f"{url}/v1/embeddings"
    texts = Texts(os.urandom(4).hex())
    n, size, conc = args.requests, args.inputs, args.concurrency
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:
        await sequential(session, endpoint, [texts.batch(size) for _ in range(5)], "miss")  # warm-up

        miss_batches = [texts.batch(size) for _ in range(n)]
        miss_lat = await sequential(session, endpoint, miss_batches, "miss")
        partial_batches = [b[: size // 2] + texts.batch(size - size // 2) for b in miss_batches]
        partial_lat = await sequential(session, endpoint, partial_batches, "partial")
        hit_lat = await sequential(session, endpoint, miss_batches, "hit")

        miss_wall = await concurrent(session, endpoint, [texts.batch(size) for _ in range(n)], "miss", conc)
        partial_wall = await concurrent(session, endpoint, [b[: size // 2] + texts.batch(size - size // 2)
                                                            for b in miss_batches], "partial", conc)
        hit_wall = await concurrent(session, endpoint, miss_batches, "hit", conc)
    return [phase_result(store, "miss", miss_lat, miss_wall, n, size),
            phase_result(store, "partial", partial_lat, partial_wall, n, size),
            phase_result(store, "hit", hit_lat, hit_wall, n, size)]


def stores(stack: ExitStack, with_redis: bool) -> Iterator[tuple[str, str]]:
    yield "memory", "memory://"
    if with_redis and REDIS_SERVER is not None:
        redis = RedisServer().start()
        stack.callback(redis.stop)
        yield "redis", redis.url


def run(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeOpenAI(delay=args.delay)
    results: list[Phase] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="embedgate-bench-") as tmp:
        upstream = ThreadedServer(fake.app).start()
        stack.callback(upstream.stop)
        for store, store_url in stores(stack, not args.no_redis):
            config = Path(tmp) / f"{store}.yaml"
            config.write_text(yaml.safe_dump({
                "store": {"url": store_url, "prefix": "bench"},
                "models": [{"name": MODEL, "provider": "openai", "api_base": f"{upstream.url}/v1",
                            "api_key": fake.api_key, "dimensions": fake.dims, "supports_dimensions": True}],
            }))
            gateway = GatewayProcess(config)
            stack.callback(gateway.stop)
            gateway.wait_ready(timeout=60)
            results += asyncio.run(asyncio.wait_for(measure(gateway.url, store, args), args.time_limit))
            gateway.stop()
    return {
        "benchmark": "cache hit vs miss latency",
        "upstream_delay_ms": args.delay * 1000,
        "inputs_per_request": args.inputs,
        "requests_per_phase": args.requests,
        "concurrency": args.concurrency,
        "dimensions": fake.dims,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "phases": [asdict(p) for p in results],
        "ratios_vs_miss": ratios(results),
    }


def ratios(results: list[Phase]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p in results:
        miss = next(m for m in results if m.store == p.store and m.phase == "miss")
        if p.phase != "miss":
            out[f"{p.store}/{p.phase}"] = {
                "p50_latency": round(p.p50_ms / miss.p50_ms, 3),
                "p95_latency": round(p.p95_ms / miss.p95_ms, 3),
                "throughput": round(p.throughput_rps / miss.throughput_rps, 2),
            }
    return out


def table(report: dict[str, Any]) -> str:
    head = f"{'store':8} {'phase':8} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'inputs/s':>9} {'p50 vs miss':>12}"
    lines = [head, "-" * len(head)]
    for p in report["phases"]:
        ratio = report["ratios_vs_miss"].get(f"{p['store']}/{p['phase']}", {}).get("p50_latency", 1.0)
        lines.append(f"{p['store']:8} {p['phase']:8} {p['p50_ms']:8.2f} {p['p95_ms']:8.2f} "
                     f"{p['throughput_rps']:8.1f} {p['inputs_per_s']:9.1f} {ratio:11.3f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per phase")
    parser.add_argument("--inputs", type=int, default=16, help="inputs per request")
    parser.add_argument("--delay", type=float, default=0.020, help="fake upstream delay, seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per store, at most")
    parser.add_argument("--no-redis", action="store_true", help="memory:// only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args)
    print(f"upstream delay {args.delay * 1000:.0f} ms, {args.inputs} inputs/request, "
          f"{args.requests} requests/phase, {args.concurrency} clients for throughput")
    print(table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
