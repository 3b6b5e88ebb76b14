"""A redis-server this test run starts itself, on a free port. Never a Redis it did not start."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from testkit.servers import free_port

REDIS_SERVER = shutil.which("redis-server")
NO_REDIS_REASON = "redis-server is not installed (.ci/run installs it with apt-get)"


class RedisServer:
    def __init__(self, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(NO_REDIS_REASON)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix=f"embedgate-redis-{self.port}-"))
        self._extra = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *self._extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is written on the way down (an AOF keeps what was fsynced)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None
