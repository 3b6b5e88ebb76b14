"""A Sentinel-monitored Redis of our own: a primary, a replica and three sentinels, each on a free port."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from testkit.redis_server import RedisServer
from testkit.servers import free_port

REDIS_SENTINEL = shutil.which("redis-sentinel")
NO_SENTINEL_REASON = "redis-sentinel is not installed (.ci/run installs it with apt-get)"
SERVICE = "embedgate"


class SentinelGroup:
    def __init__(self, sentinels: int = 3) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer()
        self.ports = [free_port() for _ in range(sentinels)]
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelGroup:
        assert REDIS_SENTINEL is not None, NO_SENTINEL_REASON
        self.primary.start()
        self.replica._extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        for port in self.ports:
            conf = self.primary.dir / f"sentinel-{port}.conf"  # sentinels rewrite their config: a file each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.primary.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
            self._procs.append(subprocess.Popen([REDIS_SENTINEL, str(conf)], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
        self.wait_for_primary(self.primary.port)
        return self

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers sees it."""
        for port in self.ports:
            try:
                address = redis.Redis(port=port).execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
            except redis.ConnectionError:
                continue
            if address:
                return int(address[1])
        return None

    def wait_for_primary(self, port: int | None = None, not_port: int | None = None, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.primary_port()
            if seen is not None and (port is None or seen == port) and seen != not_port:
                return seen
            time.sleep(0.1)
        raise TimeoutError("sentinels never agreed on the expected primary")

    def replicated(self) -> None:
        """Block until the replica has every write the primary has (WAIT 1)."""
        assert redis.Redis(port=self.primary.port).execute_command("WAIT", 1, 5000) >= 1

    def kill_primary(self) -> None:
        assert self.primary.proc is not None
        self.primary.proc.kill()
        self.primary.proc.wait()

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
        self.replica.stop()
        self.primary.stop()
        shutil.rmtree(self.primary.dir, ignore_errors=True)
