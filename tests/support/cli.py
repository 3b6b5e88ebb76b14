"""The `embedgate` command line, run as a user would: a subprocess from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from testkit.servers import ROOT


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m proxy ARGS`; `env` is added to this process's environment."""
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})
