"""The image, short of building it (no Docker engine here): its entry point and HEALTHCHECK run for real on this
machine as the image runs them, and the Dockerfile copies what exists, past .dockerignore, as a non-root user."""

from __future__ import annotations

import fnmatch
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from testkit.openai_upstream import FakeOpenAI
from testkit.servers import ROOT, GatewayProcess, child_pids, free_port
from tests.conftest import upstream_config
from tests.support.http import embed_ok

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` is the image's venv's


def container_cpus() -> int:
    """What the entry point must count: the affinity mask, capped by a cgroup v2 or v1 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    v2, v1 = Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu")
    if v2.exists():
        quota, period = v2.read_text().split()
    elif (v1 / "cpu.cfs_quota_us").exists():
        quota, period = (v1 / "cpu.cfs_quota_us").read_text().strip(), (v1 / "cpu.cfs_period_us").read_text().strip()
    else:
        return cpus
    if quota == "max" or int(quota) < 0:
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


@contextmanager
def entrypoint_gateway(fake: FakeOpenAI, directory: Path, **env: str) -> Iterator[GatewayProcess]:
    """`docker/entrypoint.sh` with no arguments, as the image's CMD runs it; the venv's python first on PATH."""
    path = directory / "image.yaml"
    path.write_text(yaml.safe_dump(upstream_config(fake, server={"drain_grace": 2, "drain_timeout": 5})))
    port = free_port()
    environment = {"EMBEDGATE_CONFIG": str(path), "EMBEDGATE_HOST": "127.0.0.1", "EMBEDGATE_PORT": str(port),
                   "PATH": VENV_PATH, **env}
    for name in ("EMBEDGATE_WORKERS", "OMP_NUM_THREADS"):
        environment.setdefault(name, "")
    gateway = GatewayProcess(path, port=port, env=environment, command=[str(ENTRYPOINT)])
    try:
        yield gateway.wait_ready(timeout=60)
    finally:
        gateway.stop()


def worker_pids(pid: int) -> list[int]:
    """The worker processes of `embedgate serve` (multiprocessing also starts a resource tracker)."""
    return [child for child in child_pids(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def process_env(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def readyz_status(url: str, timeout: float = 10) -> int:
    """/readyz once it stops answering 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                status = int(response.status)
        except urllib.error.HTTPError as err:
            return err.code
        assert status == 200
        time.sleep(0.02)
    raise TimeoutError(f"{url}/readyz still 200 after {timeout}s")


def healthcheck(port: int) -> int:
    """The image's HEALTHCHECK command, run as docker runs it (inside the container, on its port)."""
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env={**os.environ, "EMBEDGATE_PORT": str(port)},
                          capture_output=True, timeout=30).returncode


def test_the_healthcheck_follows_readiness_through_the_drain(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    with entrypoint_gateway(fake_openai, tmp_path, EMBEDGATE_WORKERS="1") as gateway:
        cmdline = Path(f"/proc/{gateway.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:4] == [b"-m", b"proxy", b"serve"]  # exec'd: SIGTERM reaches the gateway itself
        assert worker_pids(gateway.proc.pid) == []  # EMBEDGATE_WORKERS=1: one process
        assert process_env(gateway.proc.pid)["OMP_NUM_THREADS"] == str(container_cpus())  # its torch gets every CPU
        embed_ok(gateway.url, "through the image's entry point")
        assert healthcheck(gateway.port) == 0
        gateway.proc.send_signal(signal.SIGTERM)
        assert readyz_status(gateway.url) == 503  # draining, the port still open...
        assert healthcheck(gateway.port) == 1  # ...and so unhealthy
        assert gateway.proc.wait(timeout=20) == 0
        assert healthcheck(gateway.port) == 1  # gone


def test_the_entrypoint_runs_a_worker_per_cpu_whatever_omp_num_threads_says(
        fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # nproc itself obeys OMP_NUM_THREADS; the worker count must not.
    with entrypoint_gateway(fake_openai, tmp_path, OMP_NUM_THREADS="1") as gateway:
        cpus = container_cpus()
        assert len(worker_pids(gateway.proc.pid)) == (cpus if cpus > 1 else 0)
        assert process_env(gateway.proc.pid)["OMP_NUM_THREADS"] == "1"  # the operator's own setting stands
        embed_ok(gateway.url, "one of several workers")


def test_the_entrypoint_runs_any_other_embedgate_command() -> None:
    result = subprocess.run([str(ENTRYPOINT), "check-config", "config/compose.yaml"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PATH": VENV_PATH})
    assert result.returncode == 0, result.stderr
    assert "config/compose.yaml: OK" in result.stdout


def dockerignored(path: str) -> bool:
    """Docker's rule: the last .dockerignore pattern that matches the path or a folder above it wins."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
               for prefix in prefixes):
            ignored = not negated
    return ignored


def test_every_file_the_dockerfile_copies_exists_and_reaches_the_build() -> None:
    sources = [source for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.MULTILINE)
               for source in line.split()[:-1]]
    assert {"pyproject.toml", "proxy", "providers", "config", "docker/entrypoint.sh", "docker/healthcheck.py"} <= set(
        sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source), f"{source} is excluded by .dockerignore"
    for left_out in (".venv", ".git", "tests", "bench", "proxy/__pycache__"):
        assert dockerignored(left_out), left_out


def test_the_image_runs_as_a_numeric_non_root_user_with_a_readiness_healthcheck() -> None:
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    [user] = re.findall(r"^USER (\S+)$", final_stage, re.MULTILINE)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    [check] = re.findall(r"^HEALTHCHECK .*CMD (.+)$", final_stage, re.MULTILINE)
    assert "/app/docker/healthcheck.py" in check
    assert re.search(r'^ENTRYPOINT \["/app/docker/entrypoint.sh"\]$', final_stage, re.MULTILINE)
    assert "HF_HUB_OFFLINE=1" in final_stage  # the weights are in the image: never reach for a hub


def test_the_image_installs_the_torch_make_installs_from_the_cpu_index() -> None:
    makefile_torch = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    image_torch = re.search(r"^ARG TORCH_SPEC=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert makefile_torch and image_torch and makefile_torch[1] == image_torch[1]
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", DOCKERFILE, re.MULTILINE)
