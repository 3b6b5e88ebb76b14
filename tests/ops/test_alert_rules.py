"""The alert rules and Prometheus config pass promtool, and every alert is unit-tested firing and not firing."""

from __future__ import annotations

import pytest
import yaml

from tests.support.prometheus import (
    ALERT_RULES,
    NO_PROMTOOL_REASON,
    PROMETHEUS_DIR,
    PROMTOOL,
    promtool,
)

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL_REASON)
RULES_TEST = PROMETHEUS_DIR / "alerts_test.yml"


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]}
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert fired == alerts, f"alerts never tested firing: {sorted(alerts - fired)}"
    assert silent == alerts, f"alerts never tested silent: {sorted(alerts - silent)}"


def test_the_compose_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
