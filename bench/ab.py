"""Two versions of the gateway side by side: is a change faster, by how much, on a machine that drifts.

On this kind of machine speed moves 2-3x from hour to hour and ±15 % from one run to the next, so two
versions measured one after the other (even in alternated pairs) cannot show a 5 % change. Here both run
at once, each its own `embedgate serve` (from its own git worktree) in front of one fake upstream, and one
load generator sends its requests to them in turn: whatever the machine does, it does to both. Each round
measures, for each gateway, CPU per request at 32 clients and one at a time (from /proc/<pid>/task/*/
schedstat, in ns, not clock ticks) and the sequential p50; the order of the two flips every round.

    python -m bench.ab BASE [CHANGED]     # git refs; CHANGED defaults to the working tree as it is
    python -m bench.ab HEAD HEAD          # A/A: how far apart two identical gateways read (the noise)
    python -m bench.ab BASE --largest     # the largest legal request instead (2048 x 1536, base64 and float)

Reports each figure's ratio CHANGED ÷ BASE per round and their geometric mean, and writes
bench/results/<date>-ab.json. Run an A/A beside an A/B: a ratio is a finding only outside the A/A's spread.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from bench.gateway import (
    LARGE,
    LARGE_DIMS,
    LARGE_INPUTS,
    RESULTS,
    SMALL,
    gateway_config,
    load_process,
    team_key,
    texts,
    upstream,
)
from testkit.redis_server import RedisServer
from testkit.servers import GatewayProcess, write_config

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ("base64", "float")


@contextmanager
def checkout(ref: str | None) -> Iterator[Path]:
    """The tree of `ref` (a throwaway worktree), or this working tree as it is when `ref` is None."""
    if ref is None:
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="embedgate-ab-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), ref], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far, in ns (the scheduler's own count)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            pass
    return total


# --- the load generator, in its own process ---------------------------------------------------------------

async def _alternate(urls: list[str], keys: list[str | None], inputs: list[list[str]], clients: int, model: str,
                     fmt: str) -> list[float]:
    """Request i goes to urls[i % 2]; returns each gateway's p50 in ms."""
    bodies = [orjson.dumps({"model": model, "input": x, "encoding_format": fmt}) for x in inputs]
    headers = [{"Content-Type": "application/json", **({"Authorization": f"Bearer {k}"} if k else {})} for k in keys]
    seconds: list[list[float]] = [[] for _ in urls]
    work = iter(enumerate(bodies))
    async with aiohttp.ClientSession() as session:
        async def client() -> None:
            for i, body in work:
                which = i % len(urls)
                started = time.perf_counter()
                async with session.post(f"{urls[which]}/v1/embeddings", data=body, headers=headers[which]) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{urls[which]} answered {resp.status}")
                seconds[which].append(time.perf_counter() - started)
        await asyncio.gather(*(client() for _ in range(clients)))
    return [float(np.percentile(np.asarray(s) * 1000, 50)) for s in seconds]


def alternate(urls: list[str], keys: list[str | None], inputs: list[list[str]], clients: int, model: str = SMALL,
              fmt: str = "base64") -> list[float]:
    return asyncio.run(_alternate(urls, keys, inputs, clients, model, fmt))


# --- the rounds -------------------------------------------------------------------------------------------

def measure(args: argparse.Namespace, trees: dict[str, Path], tmp: Path) -> list[dict[str, Any]]:
    """The rounds: half with the base gateway started first, half (fresh processes) with the changed one
    first, so neither start order nor port favours one side."""
    with load_process() as load, upstream(64) as small, upstream(LARGE_DIMS) as large:
        first = _rounds(args, load, (small, large), list(trees.items()), args.rounds // 2, tmp)
        return first + _rounds(args, load, (small, large), list(trees.items())[::-1], args.rounds - len(first), tmp)


def _rounds(args: argparse.Namespace, load: concurrent.futures.Executor, upstreams: tuple[str, str],
            trees: list[tuple[str, Path]], count: int, tmp: Path) -> list[dict[str, Any]]:
    with ExitStack() as stack:
        gateways = []
        for i, (_, tree) in enumerate(trees):
            store = "memory://"
            if args.mode == "production":  # one Redis each: neither gateway's store traffic slows the other's
                redis = RedisServer().start()
                stack.callback(redis.stop)
                store = redis.url
            config = write_config(gateway_config(args.mode, *upstreams, store), tmp / f"{trees[i][0]}.yaml")
            process = GatewayProcess(config, tree=tree)
            stack.callback(process.stop)
            url = process.wait_ready(timeout=90).url
            gateways.append((url, process.proc.pid, team_key(url) if args.mode == "production" else None))

        def run(order: list[tuple[str, int, str | None]], inputs: list[list[str]], clients: int, model: str = SMALL,
                fmt: str = "base64") -> tuple[dict[int, float], dict[int, float]]:
            """Each gateway's CPU µs per request and p50 ms over `inputs` sent in turn to `order`."""
            urls, keys = [g[0] for g in order], [g[2] for g in order]
            if args.hit:  # the same texts once before, outside the measure, so every measured one is a hit
                load.submit(alternate, urls, keys, inputs, clients, model, fmt).result()
            before = {pid: cpu_ns(pid) for _, pid, _ in order}
            p50s = load.submit(alternate, urls, keys, inputs, clients, model, fmt).result()
            per_gateway = len(inputs) / len(order)
            return ({pid: (cpu_ns(pid) - before[pid]) / 1e3 / per_gateway for _, pid, _ in order},
                    {g[1]: p50 for g, p50 in zip(order, p50s, strict=True)})

        run(gateways, [[t] for t in texts("warm", 2000)], 32)
        largest = [texts("largest", LARGE_INPUTS)] * (2 * args.largest_requests)  # the same body: the fake's memo
        if args.largest:
            for fmt in FORMATS:
                run(gateways, largest[:4], 1, LARGE, fmt)
        rounds = []
        for r in range(count):
            order = gateways if r % 2 == 0 else gateways[::-1]
            figures: dict[int, dict[str, float]] = {pid: {} for _, pid, _ in gateways}
            if args.largest:
                for fmt in FORMATS:
                    cpu, p50 = run(order, largest, 1, LARGE, fmt)
                    for pid in figures:
                        figures[pid] |= {f"largest_{fmt}_cpu_us": cpu[pid], f"largest_{fmt}_p50_ms": p50[pid]}
            else:
                c32, _ = run(order, [[t] for t in texts(f"c32-{r}-{os.urandom(3).hex()}", args.requests)], 32)
                seq, p50 = run(order, [[t] for t in texts(f"seq-{r}-{os.urandom(3).hex()}", args.sequential)], 1)
                for pid in figures:
                    figures[pid] |= {"cpu_us_c32": c32[pid], "cpu_us_seq": seq[pid], "p50_ms_seq": p50[pid]}
            rounds.append({label: figures[pid] for (label, _), (_, pid, _) in zip(trees, gateways, strict=True)})
        return rounds


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for figure in rounds[0]["base"]:
        ratios = np.asarray([r["changed"][figure] / r["base"][figure] for r in rounds])
        out[figure] = {"geomean_ratio": round(float(np.exp(np.log(ratios).mean())), 3),
                       "min": round(float(ratios.min()), 3), "max": round(float(ratios.max()), 3),
                       "base_median": round(float(np.median([r["base"][figure] for r in rounds])), 3),
                       "changed_median": round(float(np.median([r["changed"][figure] for r in rounds])), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("base", help="git ref of the base version")
    parser.add_argument("changed", nargs="?", help="git ref of the changed version (default: the working tree)")
    parser.add_argument("--mode", choices=("open", "production"), default="open")
    parser.add_argument("--hit", action="store_true", help="production mode: measure cache hits")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=6000, help="per round at 32 clients, both gateways")
    parser.add_argument("--sequential", type=int, default=800, help="per round one at a time, both gateways")
    parser.add_argument("--largest", action="store_true",
                        help="the largest legal request (2048 x 1536), base64 and float, one at a time")
    parser.add_argument("--largest-requests", type=int, default=6, help="per round and format, each gateway")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="embedgate-ab-") as tmp:
        trees = {"base": stack.enter_context(checkout(args.base)),
                 "changed": stack.enter_context(checkout(args.changed))}
        rounds = measure(args, trees, Path(tmp))
    report = {"benchmark": "two gateways side by side, one alternating load",
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "base": args.base, "changed": args.changed or "working tree", "mode": args.mode, "hit": args.hit,
              "largest": args.largest, "requests": {"c32": args.requests, "sequential": args.sequential,
                                                    "largest": args.largest_requests},
              "summary": summary(rounds), "rounds": rounds}
    output = args.output or RESULTS / f"{datetime.date.today().isoformat()}-ab.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'figure':24s} {'changed ÷ base':>15s} {'min':>7s} {'max':>7s}   medians base → changed")
    for figure, s in report["summary"].items():
        print(f"{figure:24s} {s['geomean_ratio']:15.3f} {s['min']:7.3f} {s['max']:7.3f}   "
              f"{s['base_median']:.3f} → {s['changed_median']:.3f}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
