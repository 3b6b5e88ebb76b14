"""A three-node Redis Cluster on loopback, started by this test run (no replicas)."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from testkit.redis_server import NO_REDIS_REASON, REDIS_SERVER, RedisServer
from testkit.servers import free_port

REDIS_CLI = shutil.which("redis-cli")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            return port


class RedisClusterServers:
    def __init__(self, nodes: int = 3) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError(NO_REDIS_REASON)
        self.nodes = [
            RedisServer(port, extra_args=("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                                          "--cluster-node-timeout", "5000"))
            for port in (_cluster_port() for _ in range(nodes))
        ]
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        client = redis.Redis(port=node.port)
        try:
            return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
        finally:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
