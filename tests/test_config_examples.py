"""Every example config passes `embedgate check-config`, with each `${VAR}` it needs set to a placeholder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testkit.servers import ROOT
from tests.support.cli import run_cli

EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))
REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # no `:-default`: the example needs it set


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_passes_check_config(path: Path) -> None:
    env = {name: f"example-{name.lower().replace('_', '-')}" for name in REQUIRED_VAR.findall(path.read_text())}
    result = run_cli("check-config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    for name in re.findall(r"^  - name: (\S+)", path.read_text(), re.MULTILINE):
        assert name in result.stdout


def test_the_examples_are_found() -> None:
    assert {"azure.yaml", "bedrock.yaml", "cohere.yaml", "gemini.yaml", "openai-compatible.yaml", "voyage.yaml"} \
        <= {path.name for path in EXAMPLES}
