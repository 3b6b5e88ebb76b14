"""Redis time of the per-request quota script (proxy/lua/quota.lua), as Redis itself counts it.

A redis-server of our own; `Quotas` charges requests of 10 keys and 200 end users of one team, on a
test clock that moves 1 ms per request (1,000 requests a second, so every window holds buckets over
the whole minute). Limits are set at every level (six window hashes per request) and are high
enough that every request is admitted: the common case. After WARMUP simulated seconds (a full
window) the command stats are reset; then `--seconds` more are charged and Redis's own `INFO
commandstats` gives the µs per `evalsha` call: the time every request's quota check holds Redis.

`python -m bench.quota [--seconds 30] [--rate 1000]`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time

from prometheus_client import CollectorRegistry, Counter

from proxy.accounts import Accounts, TeamConfig
from proxy.auth import Principal
from proxy.ledger import Ledger
from proxy.quota import Quotas
from proxy.settings import Limits, StoreSettings
from proxy.store import Outages, Store
from testkit.redis_server import RedisServer

TEAM = "bench"
WARMUP = 61  # simulated seconds: every window full before anything is counted
CONCURRENCY = 32  # requests in flight, as many clients would keep them
PLENTY = Limits(rpm=10**9, tpm=10**12, tokens_per_day=10**15, tokens_per_month=10**16)


async def charge(quotas: Quotas, keys: list[Principal], users: list[str], n: int, rng: random.Random) -> None:
    pending: set[asyncio.Task[object]] = set()
    for _ in range(n):
        if len(pending) >= CONCURRENCY:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(asyncio.ensure_future(quotas.charge(rng.choice(keys), rng.choice(users), rng.randint(5, 500))))
    await asyncio.gather(*pending)


async def main_thread_cpu(store: Store) -> float:
    """CPU seconds of Redis's main thread: unlike `usec_per_call` (wall time), not inflated when a busy
    machine preempts Redis mid-script, though it also holds reading commands and writing replies."""
    cpu = await store.client.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


async def measure(url: str, seconds: int, rate: int) -> dict[str, float]:
    store = Store(StoreSettings(url=url, prefix="bq"))
    await store.warm_up()
    try:
        await Accounts(store).put_team(TEAM, TeamConfig(limits=PLENTY, user_limits=PLENTY))
        # From now on the wall clock, not a fixed date: a day or month budget that ended in the past would
        # have its key expire at once and be written anew (with its EXPIREAT) on every request.
        ticks = itertools.count(int(time.time()) * rate)
        quotas = Quotas(store, Outages(Counter("e", "e", ["operation"], registry=CollectorRegistry())),
                        Ledger(store, 100_000, None), clock=lambda: next(ticks) * 1000 // rate)
        rng = random.Random(7)
        keys = [Principal(f"key{n}", TEAM, limits=PLENTY) for n in range(10)]
        users = [f"user{n}" for n in range(200)]
        await charge(quotas, keys, users, WARMUP * rate, rng)
        await store.client.config_resetstat()
        cpu = await main_thread_cpu(store)
        started = time.perf_counter()
        await charge(quotas, keys, users, seconds * rate, rng)
        wall = time.perf_counter() - started
        cpu = await main_thread_cpu(store) - cpu
        stats = (await store.client.info("commandstats"))["cmdstat_evalsha"]
        return {"calls": stats["calls"], "usec_per_call": stats["usec_per_call"],
                "cpu_usec_per_call": round(cpu * 1e6 / stats["calls"], 2),
                "calls_per_wall_second": round(stats["calls"] / wall)}
    finally:
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30, help="simulated seconds measured after the warm-up")
    parser.add_argument("--rate", type=int, default=1000, help="requests per simulated second")
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        print(json.dumps(asyncio.run(measure(server.url, args.seconds, args.rate))))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
