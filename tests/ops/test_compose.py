"""docker-compose.yml passes `docker-compose config`, and its parts fit together: every replica sits behind
HAProxy and is scraped by Prometheus, HAProxy takes a draining replica out before its port closes, docker
waits out the drain, Redis persists and never evicts, Grafana gets the dashboard and the datasource it names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from proxy.settings import load_settings
from testkit.servers import ROOT
from tests.support.cli import run_cli
from tests.support.haproxy import HAPROXY_CFG, backend_servers, check_timing
from tests.support.prometheus import DASHBOARD, PROMETHEUS_DIR

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = ROOT / "config" / "compose.yaml"
DOCKER_COMPOSE = shutil.which("docker-compose")
REPLICAS = ("embedgate-a", "embedgate-b", "embedgate-gpu")


def docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    assert DOCKER_COMPOSE is not None
    return subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE_FILE), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The services as `docker-compose config` resolves them, or as YAML reads them where it is absent."""
    if DOCKER_COMPOSE is None:
        return dict(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    result = docker_compose("--profile", "gpu", "config")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout)["services"])


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", str(duration))
    assert match, duration
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed (.ci/run installs it)")
def test_docker_compose_config_passes() -> None:
    result = docker_compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    listed = docker_compose("config", "--services")
    assert set(listed.stdout.split()) == {*REPLICAS, "haproxy", "redis", "redis-cache", "prometheus", "grafana"}


def test_the_gpu_profile_gives_its_replica_a_gpu_and_a_cuda_torch(services: dict[str, Any]) -> None:
    gpu = services["embedgate-gpu"]
    assert gpu["profiles"] == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert gpu["build"]["args"]["TORCH_INDEX"] == ""  # PyPI's Linux torch, which has CUDA
    for name in ("embedgate-a", "embedgate-b"):
        assert "/whl/cpu" in services[name]["build"]["args"]["TORCH_INDEX"]
        assert "deploy" not in services[name]


def test_every_replica_is_behind_haproxy_and_scraped(services: dict[str, Any]) -> None:
    replicas = {name for name, service in services.items() if str(service.get("image", "")).startswith("embedgate:")}
    assert replicas == set(REPLICAS)
    assert set(backend_servers(HAPROXY_CFG.read_text()).values()) == {f"{name}:8080" for name in replicas}
    [job] = [job for job in yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
             if job["job_name"] == "embedgate"]
    targets = {target for group in job.get("static_configs", []) for target in group["targets"]}
    targets |= {f"{name}:{group['port']}" for group in job.get("dns_sd_configs", []) for name in group["names"]}
    assert targets == {f"{name}:8080" for name in replicas}


def test_haproxy_takes_a_draining_replica_out_before_it_closes_and_docker_waits_out_the_drain(
        services: dict[str, Any]) -> None:
    server = load_settings(str(COMPOSE_CONFIG)).server
    detection = check_timing(HAPROXY_CFG.read_text())
    assert detection < server.drain_grace, "HAProxy would still send to a replica that closed its port"
    for name in REPLICAS:
        environment = services[name]["environment"]
        assert environment["EMBEDGATE_CONFIG"] == "/app/config/compose.yaml"
        assert seconds(services[name]["stop_grace_period"]) > server.drain_grace + server.drain_timeout
        assert services[name]["init"] is True


def test_the_replicas_config_passes_check_config() -> None:
    result = run_cli("check-config", str(COMPOSE_CONFIG))
    assert result.returncode == 0, result.stderr
    settings = load_settings(str(COMPOSE_CONFIG))
    assert settings.store.url == "redis://redis:6379/0"
    assert settings.cache.store is not None and settings.cache.store.url == "redis://redis-cache:6379/0"
    assert settings.server.host == "0.0.0.0"


def test_redis_persists_every_second_and_never_evicts(services: dict[str, Any]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(":/data" in str(volume) for volume in services["redis"]["volumes"])
    assert "--maxmemory-policy allkeys-lru" in " ".join(services["redis-cache"]["command"])


def test_grafana_is_provisioned_with_the_dashboard_and_the_datasource_it_names(services: dict[str, Any]) -> None:
    provisioning = ROOT / "config" / "grafana" / "provisioning"
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    [provider] = yaml.safe_load((provisioning / "dashboards" / "embedgate.yml").read_text())["providers"]
    mounts = [str(volume) if not isinstance(volume, dict) else f"{volume['source']}:{volume['target']}"
              for volume in services["grafana"]["volumes"]]
    assert any(mount.split(":")[0].endswith("config/grafana/embedgate.json")
               and mount.split(":")[1] == f"{provider['options']['path']}/embedgate.json" for mount in mounts), mounts
    board = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
