"""Serving: one process, or N worker processes on one port (SO_REUSEPORT), each draining gracefully.

SIGTERM or SIGINT: `/readyz` turns 503 at once while the listener stays open for `drain_grace`
seconds (load balancers and Kubernetes need that long to stop sending), then the listener closes,
requests in flight get up to `drain_timeout` seconds to finish, and the process exits.

With several workers the parent only supervises: it gives each worker the same port (the kernel
spreads connections), passes SIGTERM on, and keeps Prometheus in multiprocess mode in a directory
it empties at start, so `/metrics` on any worker counts every worker's traffic.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from proxy import runtime
from proxy.logs import LogOptions
from proxy.logs import configure as configure_logging
from proxy.metrics import MULTIPROC_ENV
from proxy.settings import ConfigError, Settings

log = logging.getLogger("embedgate.serve")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    reuse_port: bool = False


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _serve(settings: Settings, listen: Listen) -> None:
    from proxy.app import create_app, create_metrics_app
    from proxy.handlers import GATEWAY

    app = create_app(settings)
    # handler_cancellation: a client that hangs up cancels its request, and so the upstream calls only
    # it waited on (its charge is refunded). No access log: proxy/observe.py writes one line per request.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=settings.server.drain_timeout,
                           access_log=None, handle_signals=False)
    await runner.setup()
    runtime.tune()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_port=listen.reuse_port or None)
    await site.start()
    log.info("embedgate (pid %d) serving %d model entries on http://%s:%d", os.getpid(), len(settings.models),
             listen.host, listen.port)
    metrics_runner = None
    if settings.metrics.port is not None:  # the scrape port stays open until the very end
        metrics_runner = web.AppRunner(create_metrics_app(app[GATEWAY]), access_log=None, handle_signals=False)
        await metrics_runner.setup()
        host = settings.metrics.host or listen.host
        await web.TCPSite(metrics_runner, host, settings.metrics.port, reuse_port=listen.reuse_port or None).start()
        log.info("metrics on http://%s:%d/metrics", host, settings.metrics.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    grace = settings.server.drain_grace
    log.info("draining: /readyz answers 503; listener open %.1fs more, then in-flight requests get %.1fs",
             grace, settings.server.drain_timeout)
    app[GATEWAY].draining = True
    await asyncio.sleep(grace)
    await runner.cleanup()  # closes the listener, waits for in-flight requests, then closes the gateway
    if metrics_runner is not None:
        await metrics_runner.cleanup()


def serve_one(settings: Settings, listen: Listen) -> None:
    loop = _new_loop()
    try:
        loop.run_until_complete(_serve(settings, listen))
    finally:
        loop.close()


def _worker(settings: Settings, listen: Listen, logs: LogOptions) -> None:
    configure_logging(logs)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent passes SIGINT on as SIGTERM, once
    serve_one(settings, listen)


def _fresh_multiproc_dir() -> Path:
    """Prometheus' multiprocess directory, emptied: counts from an earlier run must not leak in."""
    configured = os.environ.get(MULTIPROC_ENV)
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="embedgate-metrics-"))
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def serve_workers(settings: Settings, listen: Listen, workers: int, logs: LogOptions | None = None) -> int:
    """Start `workers` processes on one port and supervise them; returns the exit status."""
    if settings.metrics.port is not None and settings.metrics.port == listen.port:
        raise ConfigError(f"metrics.port {settings.metrics.port} is the serving port; pick another")
    if workers <= 1:
        serve_one(settings, listen)
        return 0
    metrics_dir = _fresh_multiproc_dir()
    context = multiprocessing.get_context("spawn")  # no event loop, lock or thread is inherited
    shared = Listen(listen.host, listen.port, reuse_port=True)
    processes = [context.Process(target=_worker, args=(settings, shared, logs or LogOptions()),
                                 name=f"embedgate-worker-{i}")
                 for i in range(workers)]
    for process in processes:
        process.start()

    def forward(signum: int, frame: object) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    running = list(processes)
    while running:
        wait([p.sentinel for p in running])
        for process in [p for p in running if not p.is_alive()]:
            running.remove(process)
            process.join()
            status = status or (process.exitcode or 0)
            if process.pid is not None:  # its live gauges (in flight, queue depth, breakers) no longer count
                mark_process_dead(process.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
