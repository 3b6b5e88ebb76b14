"""Who may call: store keys, static keys, the master key, allow-lists, open mode (end to end)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from proxy.auth import hash_key
from tests.conftest import start_gateway, upstream_settings
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.admin import MASTER_KEY, NO_LIMIT_PAIR, admin, create_key, embed, error_code, rate_limit_pair
from tests.support.servers import ThreadedServer

STATIC_RAW = "static-raw-key-for-gitops"
STATIC_HASHED = "static-hashed-key-for-gitops"


@pytest.fixture
def gateway(fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    server = start_gateway(upstream_settings(fake_openai, auth={
        "master_key": MASTER_KEY,
        "keys": [{"key": STATIC_RAW, "team": "ops", "id": "gitops-raw", "models": ["ada"]},
                 {"key_sha256": hash_key(STATIC_HASHED), "team": "ops", "limits": {"rpm": 1}}],
    }))
    yield server
    server.stop()


def test_missing_unknown_and_malformed_keys_are_401(gateway: ThreadedServer) -> None:
    for key in (None, "eg-not-a-real-key-at-all-0000000000", "sk-something-else"):
        resp = embed(gateway.url, key)
        assert resp.status_code == 401 and error_code(resp) == "invalid_api_key", resp.text
    bad_json = httpx.post(gateway.url + "/v1/embeddings", content=b"{not json")
    assert bad_json.status_code == 401  # authentication comes before validation, as at OpenAI


def test_a_created_key_works_and_a_revoked_one_stops_at_once(gateway: ThreadedServer) -> None:
    key = create_key(gateway.url, name="ci")
    assert key["key"].startswith("eg-") and key["team"] == "search" and key["name"] == "ci"
    assert embed(gateway.url, key["key"]).status_code == 200
    assert admin(gateway.url, "DELETE", f"/admin/keys/{key['id']}").status_code == 200
    resp = embed(gateway.url, key["key"])
    assert resp.status_code == 401 and error_code(resp) == "invalid_api_key"


def test_an_expired_key_is_401(gateway: ThreadedServer) -> None:
    key = create_key(gateway.url, expires_at=int(time.time()) - 1)
    resp = embed(gateway.url, key["key"])
    assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]
    renewed = admin(gateway.url, "PATCH", f"/admin/keys/{key['id']}", json={"expires_at": None})
    assert renewed.json()["expired"] is False
    assert embed(gateway.url, key["key"]).status_code == 200


def test_models_outside_the_allow_list_are_403(gateway: ThreadedServer) -> None:
    key = create_key(gateway.url, models=["text-embedding-3-small", "fake/*"])["key"]
    assert embed(gateway.url, key).status_code == 200
    assert embed(gateway.url, key, model="small").status_code == 200  # an alias of an allowed model
    assert embed(gateway.url, key, model="fake/anything").status_code == 200
    denied = embed(gateway.url, key, model="ada")
    assert denied.status_code == 403 and error_code(denied) == "model_not_allowed"
    assert denied.json()["error"]["param"] == "model"

    listed = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
    assert [m["id"] for m in listed["data"]] == ["text-embedding-3-small"]
    one = httpx.get(gateway.url + "/v1/models/ada", headers={"Authorization": f"Bearer {key}"})
    assert one.status_code == 403
    assert httpx.get(gateway.url + "/v1/models").status_code == 401


def test_static_keys_raw_and_hashed(gateway: ThreadedServer) -> None:
    assert embed(gateway.url, STATIC_RAW, model="ada").status_code == 200
    assert embed(gateway.url, STATIC_RAW).status_code == 403  # its allow-list holds only "ada"
    first = embed(gateway.url, STATIC_HASHED)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "1"
    second = embed(gateway.url, STATIC_HASHED)
    assert second.status_code == 429 and error_code(second) == "rate_limit_exceeded"


def test_the_master_key_may_call_v1_without_quotas(gateway: ThreadedServer) -> None:
    resp = embed(gateway.url, MASTER_KEY)
    assert resp.status_code == 200
    assert rate_limit_pair(resp, "requests") == rate_limit_pair(resp, "tokens") == NO_LIMIT_PAIR


def test_with_no_keys_the_gateway_runs_open_and_says_so(fake_openai: FakeOpenAI,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    server = start_gateway(upstream_settings(fake_openai))
    try:
        served = embed(server.url, None)
        assert served.status_code == 200 and "x-ratelimit-limit-requests" not in served.headers  # no caller, no limits
        assert httpx.get(server.url + "/v1/models").status_code == 200
        admin_resp = admin(server.url, "GET", "/admin/keys")
        assert admin_resp.status_code == 403 and error_code(admin_resp) == "admin_disabled"
    finally:
        server.stop()
    assert any("runs OPEN" in r.getMessage() for r in caplog.records)
