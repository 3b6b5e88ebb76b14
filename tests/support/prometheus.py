"""A Prometheus this test run starts itself (Debian's `prometheus` binary, on a free port, with a config and
storage of its own), promtool, and the PromQL that the shipped dashboard and alert rules hold."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from testkit.servers import ROOT, free_port, stop_process

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
NO_PROMETHEUS_REASON = "prometheus is not installed (.ci/run installs Debian's prometheus package)"
NO_PROMTOOL_REASON = "promtool is not installed (.ci/run installs Debian's prometheus package)"

PROMETHEUS_DIR = ROOT / "config" / "prometheus"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD = ROOT / "config" / "grafana" / "embedgate.json"
JOB = "embedgate"  # the scrape job the dashboard and the rules name, as in config/prometheus/prometheus.yml

# Grafana's variables, as a dashboard with every option on "All" and a short range sends them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$team": ".*", "$model": ".*", "$deployment": ".*"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


class PromQLError(AssertionError):
    pass


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a shipped file, and where it comes from."""

    where: str
    expr: str


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, NO_PROMTOOL_REASON
    return subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _grafana_expr(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def dashboard_queries(path: Path = DASHBOARD) -> list[Query]:
    """Every panel target and every variable query of a Grafana dashboard, variables filled in;
    `label_values(selector, label)` as the selector it reads."""
    board = json.loads(path.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries.append(Query(f"panel {panel['title']!r} {target['refId']}", _grafana_expr(target["expr"])))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: not label_values(...): {variable['query']}"
            queries.append(Query(f"variable ${variable['name']}", match["selector"]))
    return queries


def rule_queries(path: Path = ALERT_RULES) -> list[Query]:
    rules = yaml.safe_load(path.read_text())
    return [Query(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


class PrometheusServer:
    """`prometheus` scraping `targets` (host:port) every `interval` as job `embedgate`, evaluating `rule_files`."""

    def __init__(self, targets: Sequence[str], rule_files: Sequence[Path] = (), interval: str = "1s") -> None:
        if PROMETHEUS is None:
            raise RuntimeError(NO_PROMETHEUS_REASON)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"embedgate-prometheus-{self.port}-"))
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(base_url=self.url, timeout=10)

    def start(self, timeout: float = 30) -> PrometheusServer:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log()}")
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout}s: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _api(self, path: str, **params: str) -> Any:
        body = self._client.get(f"/api/v1/{path}", params=params).json()
        if body["status"] != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Series]:
        """An instant query; PromQLError if Prometheus refuses it."""
        data = self._api("query", query=expr)
        if data["resultType"] == "scalar":
            return [Series({}, float(data["result"][1]))]
        return [Series(item["metric"], float(item["value"][1])) for item in data["result"]]

    def wait_for(self, expr: str, ok: Callable[[list[Series]], bool], timeout: float = 30) -> list[Series]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if ok(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr}: still {result} after {timeout}s")
            time.sleep(0.2)

    def wait_for_total(self, expr: str, value: float, timeout: float = 30) -> None:
        """Until `expr` (one series) reads `value`: a scrape has seen everything sent so far."""
        self.wait_for(expr, lambda result: len(result) == 1 and result[0].value == value, timeout)

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._api("alerts")["alerts"])

    def wait_for_firing(self, alertname: str, timeout: float = 30) -> list[dict[str, Any]]:
        """The alerts named `alertname` once one of them fires."""
        deadline = time.monotonic() + timeout
        while True:
            named = [alert for alert in self.alerts() if alert["labels"]["alertname"] == alertname]
            if any(alert["state"] == "firing" for alert in named):
                return named
            if time.monotonic() > deadline:
                raise TimeoutError(f"{alertname} not firing after {timeout}s: {named}")
            time.sleep(0.2)

    def stop(self) -> None:
        self._client.close()
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_prometheus(targets: Sequence[str], rule_files: Sequence[Path] = ()) -> Iterator[PrometheusServer]:
    server = PrometheusServer(targets, rule_files)
    try:
        yield server.start()
    finally:
        server.stop()


def finite(result: list[Series]) -> bool:
    """At least one series, and a number in it (a quantile over no observations is NaN)."""
    return any(math.isfinite(series.value) for series in result)
