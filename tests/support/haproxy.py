"""The shipped HAProxy config (config/haproxy/haproxy.cfg), read, and run for real in front of gateway processes
on loopback: the same config with only its addresses (and, to keep tests short, its check interval) changed."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from testkit.servers import ROOT, free_port, stop_process

HAPROXY = shutil.which("haproxy")
NO_HAPROXY_REASON = "haproxy is not installed (.ci/run installs Debian's haproxy package)"
HAPROXY_CFG = ROOT / "config" / "haproxy" / "haproxy.cfg"
SERVER = re.compile(r"^(?P<indent>\s+)server (?P<name>\S+) (?P<address>\S+)(?P<rest>.*)$", re.MULTILINE)
DEFAULT_SERVER = re.compile(r"^\s+default-server .*$", re.MULTILINE)


def backend_servers(cfg: str) -> dict[str, str]:
    """server name -> address, for every `server` line."""
    return {match["name"]: match["address"] for match in SERVER.finditer(cfg)}


def _duration(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s)?", value)
    assert match, value
    return int(match[1]) * (0.001 if match[2] == "ms" else 1)


def check_timing(cfg: str) -> float:
    """Seconds from a replica's first failed health check to HAProxy taking it out: `inter` x `fall`,
    plus one `inter` for the check already scheduled, plus `timeout check`."""
    [line] = DEFAULT_SERVER.findall(cfg)
    words = line.split()
    inter, fall = _duration(words[words.index("inter") + 1]), int(words[words.index("fall") + 1])
    timeout = re.search(r"timeout check (\S+)", cfg)
    return inter * (fall + 1) + (_duration(timeout[1]) if timeout else 0)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    assert HAPROXY is not None, NO_HAPROXY_REASON
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


class HAProxy:
    """The shipped config, its servers pointed at `replicas` (server name -> port on 127.0.0.1), the others
    removed, its frontends on free ports, health checks every `inter`."""

    def __init__(self, replicas: dict[str, int], inter: str = "200ms") -> None:
        if HAPROXY is None:
            raise RuntimeError(NO_HAPROXY_REASON)
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = HAPROXY_CFG.read_text()

        def server(match: re.Match[str]) -> str:
            port = replicas.get(match["name"])
            return "" if port is None else f"{match['indent']}server {match['name']} 127.0.0.1:{port}{match['rest']}"

        cfg = SERVER.sub(server, cfg)
        for old, new in ((r"bind :8080\b", f"bind 127.0.0.1:{self.port}"),
                         (r"bind :8404\b", f"bind 127.0.0.1:{self.stats_port}"),
                         (r"(default-server .*\binter )\S+", rf"\g<1>{inter}")):
            cfg, count = re.subn(old, new, cfg)
            assert count == 1, f"{old!r} not found once in {HAPROXY_CFG}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"embedgate-haproxy-{self.port}-"))
        self.cfg = self.dir / "haproxy.cfg"
        self.cfg.write_text(cfg)
        self.log_path = self.dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        assert HAPROXY is not None
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)], stdout=log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def states(self) -> dict[str, str]:
        """server name -> UP, DOWN, MAINT... of the embedgate backend, from the stats page's CSV."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text.lstrip("# ")
        return {row["svname"]: row["status"].split()[0] for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "embedgate" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_until(self, wanted: dict[str, str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
            try:
                states = self.states()
            except httpx.TransportError:
                states = {}
            if all(states.get(name) == state for name, state in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy: {states}, wanted {wanted}\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
