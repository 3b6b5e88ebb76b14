"""What the gateway adds: the same requests straight to the fake upstream and through `embedgate serve`.

Three kinds of process, never sharing one: the fake OpenAI upstream (testkit/openai_upstream.py, one
process per vector size), the gateway (`python -m proxy serve`) and the load generator (an aiohttp client
in a process of its own). Measured in one run, every ratio against the direct figure of the same run:

- latency of sequential one-input requests, p50/p90/p99, direct and through the gateway (added = the
  difference of the percentiles);
- throughput at 1, 8 and 32 concurrent clients, through the gateway ÷ direct;
- open mode (no key, no cache) and production mode (master key, a team key made through the admin API
  with limits at key and team level, the embedding cache, all on a redis-server this bench starts): miss
  (fresh texts) and hit (the same texts again);
- the largest legal request, 2048 inputs x 1536 dims, float and base64, open mode;
- gateway CPU per request: utime + stime of the gateway process (/proc/<pid>/stat) over a phase ÷ its
  requests;
- the floor: a bare aiohttp forwarder (bench/baseline.py) measured as open mode is, so what embedgate
  adds reads against what aiohttp itself costs on the same machine in the same run;
- the raw floor: a forwarder of two bare asyncio protocols (bench/raw_floor.py), no HTTP framework at all,
  measured the same way: what any Python gateway costs here, whatever its stack.

The load generator is Python, not wrk: its own cost caps the direct figure at high concurrency, so the
throughput ratio reads higher than wrk would show it. `--peers` measures LiteLLM's proxy in front of the
same fake upstream, the same way (bench/peers.py). Prints a table, writes bench/results/<date>.json and a
PNG plot beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from bench.baseline import bare_forwarder
from bench.gateway_report import plot, table
from bench.raw_floor import raw_forwarder
from proxy.runtime import keep_large_buffers
from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import REDIS_SERVER, RedisServer
from testkit.servers import GatewayProcess, free_port, wait_listening, write_config

RESULTS = Path(__file__).parent / "results"
SMALL, LARGE = "bench-small", "text-embedding-3-small"  # 64 dims; 1536 dims, OpenAI's size
LARGE_DIMS, LARGE_INPUTS = 1536, 2048
MASTER_KEY = "sk-bench-master-0123456789"
HIGH = 10**12  # limits that are checked and charged, never reached
CONCURRENCIES = (1, 8, 32)
UPSTREAM_KEY = FakeOpenAI.api_key  # what a direct request sends, as the gateway does


# --- the fake upstream, in its own process ---------------------------------------------------------------

def memo_middleware(limit: int = 64, min_bytes: int = 65536) -> Any:
    """Answer a repeated large body from memory: the 2048 x 1536 answer costs the fake about a second to
    build, the same for both paths, and would drown the gateway's share in noise. Small bodies are
    always answered (and checked) by the fake itself."""
    answers: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()

    @web.middleware
    async def memo(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        body = await request.read()
        if len(body) < min_bytes:
            return await handler(request)
        key = (request.headers.get("Authorization", ""), body)
        if key in answers:
            return web.Response(body=answers[key], content_type="application/json")
        response = await handler(request)
        if isinstance(response, web.Response) and response.status == 200 and isinstance(response.body, bytes):
            answers[key] = response.body
            while len(answers) > limit:
                answers.popitem(last=False)
        return response

    return memo


def serve_upstream(port: int, dims: int) -> None:
    """The fake OpenAI upstream on `port` until terminated (a child process's target)."""
    keep_large_buffers()  # as the load generator (load_process) and the gateway do
    fake = FakeOpenAI(dims=dims)
    app = fake.app()
    app.middlewares.append(memo_middleware())

    async def no_memory(app: web.Application) -> None:  # the bench sends many thousands of requests
        async def trim() -> None:
            while True:
                await asyncio.sleep(1)
                fake.received.clear()
        app["trim"] = asyncio.get_running_loop().create_task(trim())

    app.on_startup.append(no_memory)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, handler_cancellation=True)


@contextmanager
def upstream(dims: int) -> Iterator[str]:
    """A fake upstream process; yields its api_base."""
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(target=serve_upstream, args=(port, dims), daemon=True)
    proc.start()
    try:
        wait_listening(port, proc.is_alive, "the fake upstream")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.join(10)


# --- the load generator, in its own process ---------------------------------------------------------------

def load_process() -> concurrent.futures.ProcessPoolExecutor:
    """The load generator's process. It keeps the buffers it frees, as the gateway does (proxy/runtime.py):
    otherwise its 16 MB reads of the largest answer fault in fresh pages or not, by what it did before, and
    the direct largest request read 17 ms in one run and 42 in another."""
    return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=keep_large_buffers)


def texts(tag: str, count: int, words: int = 6) -> list[str]:
    return [f"{tag} {i} " + " ".join(["embedding"] * words) for i in range(count)]


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> None:
    async with session.post(url, data=body, headers=headers) as resp:
        payload = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {payload[:300]!r}")


def _bodies(model: str, inputs: list[list[str]], fmt: str) -> list[bytes]:
    return [json.dumps({"model": model, "input": x, "encoding_format": fmt}).encode() for x in inputs]


async def _sequential(url: str, bodies: list[bytes], headers: dict[str, str]) -> list[float]:
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for body in bodies:
            started = time.perf_counter()
            await _post(session, url, body, headers)
            out.append(time.perf_counter() - started)
    return out


async def _concurrent(url: str, bodies: list[bytes], headers: dict[str, str], clients: int) -> float:
    """Requests per second with `clients` clients sending `bodies` back to back."""
    queue = iter(bodies)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client() -> None:
            for body in queue:
                await _post(session, url, body, headers)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return len(bodies) / (time.perf_counter() - started)


def load_sequential(url: str, model: str, inputs: list[list[str]], fmt: str, key: str | None) -> list[float]:
    """Seconds per request, one at a time (run in the load process)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return asyncio.run(_sequential(f"{url}/embeddings", _bodies(model, inputs, fmt), headers))


def load_concurrent(url: str, model: str, inputs: list[list[str]], key: str | None, clients: int) -> float:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return asyncio.run(_concurrent(f"{url}/embeddings", _bodies(model, inputs, "base64"), headers, clients))


# --- the gateway, in its own process ----------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its children (workers), from /proc."""
    total = 0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after the name
    return total / os.sysconf("SC_CLK_TCK")


def gateway_config(mode: str, small: str, large: str, store: str) -> dict[str, Any]:
    models = [
        {"name": SMALL, "provider": "openai", "api_base": small, "api_key": UPSTREAM_KEY, "dimensions": 64},
        {"name": LARGE, "provider": "openai", "api_base": large, "api_key": UPSTREAM_KEY,
         "dimensions": LARGE_DIMS},
    ]
    if mode == "open":
        return {"models": models, "cache": {"enabled": False}}
    return {"models": models, "store": {"url": store, "prefix": "bench"}, "cache": {"enabled": True},
            "auth": {"master_key": MASTER_KEY}}


def _admin(url: str, method: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(f"{url}{path}", method=method, data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {MASTER_KEY}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def team_key(url: str) -> str:
    """A key made as a platform team makes one, through the admin API, so it lives in the store and is read
    there on every request; its team and the key both carry limits, checked and charged, never reached."""
    limits = {"rpm": HIGH, "tpm": HIGH, "tokens_per_day": HIGH, "tokens_per_month": HIGH}
    _admin(url, "PUT", "/admin/teams/bench", {"limits": limits, "user_limits": {}})
    key: str = _admin(url, "POST", "/admin/keys", {"team": "bench", "limits": limits})["key"]
    return key


# --- the measurements -------------------------------------------------------------------------------------

def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}


def added(through: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    return {k: round(through[k] - direct[k], 3) for k in direct}


class Bench:
    def __init__(self, load: concurrent.futures.Executor, args: argparse.Namespace) -> None:
        self.load, self.args = load, args

    def seq(self, url: str, model: str, inputs: list[list[str]], fmt: str = "base64",
            key: str | None = None) -> list[float]:
        return self.load.submit(load_sequential, url, model, inputs, fmt, key).result()

    def rps(self, url: str, inputs: list[list[str]], clients: int, key: str | None = None) -> float:
        return self.load.submit(load_concurrent, url, SMALL, inputs, key, clients).result()

    def gateway_cpu(self, pid: int, run: Callable[[], Any], requests: int) -> tuple[Any, float]:
        before = cpu_seconds(pid)
        result = run()
        return result, round((cpu_seconds(pid) - before) / requests * 1e6, 1)

    def latency(self, name: str, direct_url: str, through_url: str, pid: int, key: str | None,
                hit: bool) -> dict[str, Any]:
        """Sequential one-input requests: direct, then through (misses), then through again (hits) if `hit`."""
        n = self.args.requests
        one = [[t] for t in texts(f"{name}-lat-{os.urandom(3).hex()}", n)]
        self.seq(direct_url, SMALL, one[:50], key=UPSTREAM_KEY)  # warm-up
        self.seq(through_url, SMALL, [[f"warm {name} {i}"] for i in range(50)], key=key)
        direct = percentiles(self.seq(direct_url, SMALL, one, key=UPSTREAM_KEY))
        through_lat, cpu = self.gateway_cpu(pid, lambda: self.seq(through_url, SMALL, one, key=key), n)
        through = percentiles(through_lat)
        out: dict[str, Any] = {"direct": direct, "through": through, "added": added(through, direct),
                               "cpu_us_per_request": cpu}
        if hit:
            hit_lat, hit_cpu = self.gateway_cpu(pid, lambda: self.seq(through_url, SMALL, one, key=key), n)
            out["hit"] = {"through": percentiles(hit_lat), "added": added(percentiles(hit_lat), direct),
                          "cpu_us_per_request": hit_cpu}
        return out

    def throughput(self, name: str, direct_url: str, through_url: str, pid: int, key: str | None,
                   hit: bool) -> dict[str, Any]:
        n = self.args.throughput_requests
        out: dict[str, Any] = {}
        for clients in CONCURRENCIES:
            count = n if clients > 1 else n // 4
            one = [[t] for t in texts(f"{name}-tp{clients}-{os.urandom(3).hex()}", count)]
            direct = self.rps(direct_url, one, clients, UPSTREAM_KEY)
            through, cpu = self.gateway_cpu(pid, lambda one=one, c=clients: self.rps(through_url, one, c, key), count)
            row = {"direct_rps": round(direct, 1), "through_rps": round(through, 1),
                   "ratio": round(through / direct, 3), "cpu_us_per_request": cpu}
            if hit:
                hit_rps, hit_cpu = self.gateway_cpu(pid, lambda one=one, c=clients: self.rps(through_url, one, c, key),
                                                    count)
                row |= {"hit_rps": round(hit_rps, 1), "hit_ratio": round(hit_rps / direct, 3),
                        "hit_cpu_us_per_request": hit_cpu}
            out[str(clients)] = row
        return out

    def largest(self, direct_url: str, through_url: str) -> dict[str, Any]:
        """2048 inputs x 1536 dims, float and base64, sequential; the same body every time."""
        big = [texts("largest", LARGE_INPUTS)]
        out: dict[str, Any] = {}
        for fmt in ("float", "base64"):
            self.seq(direct_url, LARGE, big * 2, fmt, UPSTREAM_KEY)
            self.seq(through_url, LARGE, big * 2, fmt)
            direct = percentiles(self.seq(direct_url, LARGE, big * self.args.large_requests, fmt, UPSTREAM_KEY))
            through = percentiles(self.seq(through_url, LARGE, big * self.args.large_requests, fmt))
            out[fmt] = {"direct": direct, "through": through, "added": added(through, direct)}
        return out


def run_mode(bench: Bench, mode: str, small: str, large: str, tmp: Path, stack: ExitStack) -> dict[str, Any]:
    store = "memory://"
    if mode == "production":
        if REDIS_SERVER is None:
            return {"skipped": "redis-server is not installed"}
        redis = RedisServer().start()
        stack.callback(redis.stop)
        store = redis.url
    config = write_config(gateway_config(mode, small, large, store), tmp / f"{mode}.yaml")
    gateway = GatewayProcess(config)
    try:
        gateway.wait_ready(timeout=90)
        key = team_key(gateway.url) if mode == "production" else None
        through = f"{gateway.url}/v1"
        hit = mode == "production"
        result: dict[str, Any] = {
            "latency": bench.latency(mode, small, through, gateway.proc.pid, key, hit),
            "throughput": bench.throughput(mode, small, through, gateway.proc.pid, key, hit),
        }
        if mode == "open":
            result["largest"] = bench.largest(large, through)
        return result
    finally:
        gateway.stop()


def peer_runs(bench: Bench, small: str, tmp: Path) -> dict[str, Any]:
    from bench.peers import litellm_proxy
    out: dict[str, Any] = {}
    with litellm_proxy(small, tmp, SMALL, UPSTREAM_KEY) as peer:
        if isinstance(peer, str):
            return {"litellm": {"skipped": peer}}
        url, pid = peer
        out["litellm"] = {"version": peer_version(tmp),
                          "latency": bench.latency("litellm", small, url, pid, None, False),
                          "throughput": bench.throughput("litellm", small, url, pid, None, False)}
    return out


def peer_version(tmp: Path) -> str:
    version = tmp / "litellm-version"
    return version.read_text().strip() if version.exists() else "?"


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "gateway overhead: direct to the fake upstream vs through the gateway",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "requests": {"sequential": args.requests, "throughput": args.throughput_requests,
                     "largest": args.large_requests},
        "load_generator": "aiohttp client in its own process",
    }
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="embedgate-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        load = stack.enter_context(load_process())
        small = stack.enter_context(upstream(64))
        large = stack.enter_context(upstream(LARGE_DIMS))
        bench = Bench(load, args)
        if "open" in args.modes:  # the floors, measured as open mode is, before it
            for name, forwarder in (("baseline", bare_forwarder), ("raw_floor", raw_forwarder)):
                with forwarder(small) as (url, pid):
                    report[name] = {"latency": bench.latency(name, small, url, pid, UPSTREAM_KEY, False),
                                    "throughput": bench.throughput(name, small, url, pid, UPSTREAM_KEY, False)}
        for mode in args.modes:
            report[mode] = run_mode(bench, mode, small, large, tmp, stack)
        if args.peers:
            report["peers"] = peer_runs(bench, small, tmp)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="sequential one-input requests per phase")
    parser.add_argument("--throughput-requests", type=int, default=3000, help="requests per throughput phase")
    parser.add_argument("--large-requests", type=int, default=8, help="largest requests per format and path")
    parser.add_argument("--modes", nargs="+", default=["open", "production"], choices=["open", "production"])
    parser.add_argument("--peers", action="store_true", default=os.environ.get("PEERS") == "1",
                        help="also LiteLLM's proxy, installed in a throwaway venv (PEERS=1)")
    parser.add_argument("--output", type=Path, help="default: bench/results/<date>.json")
    args = parser.parse_args(argv)
    report = run(args)
    print(f"{report['machine']['cpus']} CPUs, load average {report['machine']['load_average']}, "
          f"{args.requests} sequential requests, {args.throughput_requests} per throughput phase")
    print(table(report))
    output = args.output or RESULTS / f"{datetime.date.today().isoformat()}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report["table"] = table(report)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    png = plot(report, output.with_suffix(".png"))
    print(f"wrote {png}" if png else "matplotlib is not installed: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
