"""Run aiohttp apps for real: on a free port, in a background thread or in a subprocess.

Tests talk to them over TCP with real clients (the `openai` SDK, LangChain, aiohttp).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(port: int, alive: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Block until 127.0.0.1:`port` accepts connections; RuntimeError if `alive()` turns false or time runs out."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, and SIGKILL if it is still there after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (under `embedgate serve --workers N`: the workers, a resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


class ThreadedServer:
    """An aiohttp app served from its own event loop thread, so sync clients can call it."""

    def __init__(self, make_app: Callable[[], web.Application], port: int | None = None) -> None:
        self._make_app = make_app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=60)
        return self

    async def _start(self) -> None:
        self.app = self._make_app()
        # As `embedgate serve` runs: a client that hangs up cancels its handler.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def call(self, coro_factory: Callable[[], object], timeout: float = 60) -> object:
        """Run a coroutine on the server's loop (to reach its in-process state)."""
        return asyncio.run_coroutine_threadsafe(coro_factory(), self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@contextmanager
def threaded_server(make_app: Callable[[], web.Application]) -> Iterator[ThreadedServer]:
    server = ThreadedServer(make_app).start()
    try:
        yield server
    finally:
        server.stop()


def wait_ready(url: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """A config file for `GatewayProcess`. Tests stop their gateways: no drain grace unless one is asked for."""
    server = {"drain_grace": 0, **config.get("server", {})}
    path.write_text(yaml.safe_dump({**config, "server": server}))
    return path


class GatewayProcess:
    """`embedgate serve` as a separate OS process, as a replica runs in production."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, port: int | None = None,
                 args: tuple[str, ...] = (), command: list[str] | None = None, tree: Path = ROOT) -> None:
        """`command` replaces `python -m proxy serve --config CONFIG --port PORT ARGS` (the image's entry point,
        which takes both from its environment). `tree`: the checkout whose code runs (bench/ab.py runs two)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = config.parent / f"gateway-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(self.port),
                        *args],
            cwd=tree, env={**os.environ, **(env or {}), **({"PYTHONPATH": str(tree)} if tree != ROOT else {})},
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> GatewayProcess:
        wait_ready(self.url, timeout, self.proc)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@contextmanager
def gateway_process(config: Mapping[str, Any], directory: Path, env: dict[str, str] | None = None,
                    *args: str) -> Iterator[GatewayProcess]:
    """`embedgate serve` of `config` (written to `directory`), with `env` added to its environment, until ready."""
    process = GatewayProcess(write_config(config, directory / "gateway.yaml"), env=env, args=args)
    try:
        yield process.wait_ready(timeout=90)
    finally:
        process.stop()
