"""Two gateway processes sharing one real Redis: limits hold exactly, revocation is immediate
everywhere, usage outlives the processes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import RedisServer
from testkit.servers import GatewayProcess
from tests.conftest import upstream_config
from tests.support.admin import MASTER_KEY, TEN_TOKENS, admin, create_key, embed, ten_tokens
from tests.support.replicas import burst, replicas

BURST = 200


@pytest.fixture
def config(fake_openai: FakeOpenAI, redis_server: RedisServer) -> dict[str, Any]:
    return upstream_config(fake_openai, auth={"master_key": MASTER_KEY},
                           store={"url": redis_server.url, "prefix": f"rep{secrets.token_hex(4)}"})


@pytest.fixture
def pair(config: dict[str, Any], tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    with replicas(config, tmp_path) as processes:
        yield processes


def test_200_concurrent_requests_against_rpm_50_admit_exactly_50(pair: list[GatewayProcess]) -> None:
    key = create_key(pair[0].url, limits={"rpm": 50})["key"]
    counts = burst([p.url for p in pair], key, {"model": "text-embedding-3-small", "input": "hi"}, BURST)
    print(f"\nrpm=50, {BURST} concurrent requests over 2 replicas: {dict(counts)}")
    assert counts == {(200, None): 50, (429, "rate_limit_exceeded"): 150}


def test_200_concurrent_requests_against_a_token_limit_admit_exactly_what_fits(pair: list[GatewayProcess]) -> None:
    key = create_key(pair[0].url, limits={"tpm": 500})["key"]  # 50 requests of 10 tokens
    counts = burst([p.url for p in pair], key, {"model": "text-embedding-3-small", "input": TEN_TOKENS}, BURST)
    print(f"\ntpm=500, {BURST} concurrent 10-token requests over 2 replicas: {dict(counts)}")
    assert counts == {(200, None): 50, (429, "rate_limit_exceeded"): 150}


def test_a_revoked_key_stops_at_once_on_every_replica(pair: list[GatewayProcess]) -> None:
    key = create_key(pair[0].url)
    assert [embed(p.url, key["key"]).status_code for p in pair] == [200, 200]
    assert admin(pair[0].url, "DELETE", f"/admin/keys/{key['id']}").status_code == 200
    assert [embed(p.url, key["key"]).status_code for p in pair] == [401, 401]


def test_usage_outlives_the_gateway_processes(config: dict[str, Any], tmp_path: Path) -> None:
    with replicas(config, tmp_path, count=1) as (first,):
        key = create_key(first.url)
        for seed in range(3):
            assert embed(first.url, key["key"], input=ten_tokens(seed)).status_code == 200
    with replicas(config, tmp_path, count=1) as (restarted,):
        usage = admin(restarted.url, "GET", "/admin/usage", params={"key": key["id"]}).json()
        assert usage["total"] == {"requests": 3, "tokens": 30, "cache_hits": 0}
        assert embed(restarted.url, key["key"]).status_code == 200  # and the key itself survived
