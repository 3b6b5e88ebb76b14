"""Who may call: store keys, static keys, the master key, allow-lists, open mode (end to end)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from proxy.auth import Authenticator, hash_key
from proxy.errors import RateLimited
from proxy.settings import AuthSettings, StoreSettings
from proxy.store import Outages
from testkit.openai_upstream import FakeOpenAI
from testkit.redis_server import RedisServer
from testkit.servers import ThreadedServer
from tests.conftest import start_gateway, upstream_settings
from tests.support.admin import (
    MASTER_KEY,
    NO_LIMIT_PAIR,
    TEN_TOKENS,
    admin,
    create_key,
    embed,
    error_code,
    put_team,
    rate_limit_pair,
)
from tests.support.cache_setup import counted_round_trips
from tests.support.http import raw_request
from tests.support.services import Services, with_services

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


@pytest.mark.parametrize("header", [b"Bearer \xff\xfe", b"Bearer eg-\xc3\x28-not-utf8", b"\xff\xfe x"])
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/embeddings"), ("GET", "/admin/keys"),
                                              ("GET", "/v1/models")])
def test_a_non_utf8_authorization_header_is_401(gateway: ThreadedServer, fake_openai: FakeOpenAI,
                                                method: str, path: str, header: bytes) -> None:
    body = b'{"model": "text-embedding-3-small", "input": "x"}'
    reply = raw_request(gateway.url, method, path, [b"Authorization: " + header, b"Content-Type: application/json"],
                        body if method == "POST" else b"")
    assert reply.status == 401, reply.body
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key", error
    assert fake_openai.received == []


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


@pytest.mark.asyncio
async def test_static_key_ids_do_not_depend_on_config_order() -> None:
    """Issue 11 item 16: two replicas listing the same keys in another order share per-key ids and counters."""
    keys = [{"key": STATIC_RAW, "team": "ops", "limits": {"rpm": 1}},
            {"key_sha256": hash_key(STATIC_HASHED), "team": "ops"}]

    async def body(s: Services) -> None:
        replicas = [Authenticator(AuthSettings(keys=order), s.store, Outages(s.errors)) for order in (keys, keys[::-1])]
        ids = [[(await a.authenticate(f"Bearer {k}")).key_id for k in (STATIC_RAW, STATIC_HASHED)]  # type: ignore[union-attr]
               for a in replicas]
        assert ids[0] == ids[1] and ids[0][0] != ids[0][1]
        await s.quotas.charge(await replicas[0].authenticate(f"Bearer {STATIC_RAW}"), None, 1)
        with pytest.raises(RateLimited):  # the other replica counts against the same per-key counter
            await s.quotas.charge(await replicas[1].authenticate(f"Bearer {STATIC_RAW}"), None, 1)
    await with_services(StoreSettings(url="memory://"), body)


# A key this replica verified before goes on as remembered while the store reads it (proxy/auth.py
# `identify`): one round trip with the quota charge instead of two. The guess is never trusted.

def test_a_known_keys_read_its_quota_charge_and_its_cache_read_are_one_round_trip(
        fake_openai: FakeOpenAI, redis_server: RedisServer) -> None:
    server = start_gateway(upstream_settings(fake_openai, auth={"master_key": MASTER_KEY},
                                             store={"url": redis_server.url, "prefix": f"rt{secrets.token_hex(4)}"}))
    try:
        key = create_key(server.url, limits={"rpm": 100})["key"]
        assert embed(server.url, key, input="first").status_code == 200  # now remembered here
        with counted_round_trips(server, redis_server) as sends:
            assert embed(server.url, key, input="second").status_code == 200
            first = sends[0]
        # The key's record, quota.lua and the cache's MGET left together, in the request's first send.
        assert b"\r\nGET\r\n" in first and b"\r\nEVALSHA\r\n" in first and b"\r\nMGET\r\n" in first, sends
    finally:
        server.stop()


def test_a_remembered_key_revoked_since_is_401_and_its_charge_given_back(gateway: ThreadedServer) -> None:
    put_team(gateway.url, "search", limits={"rpm": 10, "tpm": 1000})
    made, other = create_key(gateway.url), create_key(gateway.url)["key"]
    doomed = made["key"]
    first = embed(gateway.url, doomed, input=TEN_TOKENS)
    assert first.status_code == 200 and rate_limit_pair(first, "requests")[1] == "9"
    assert admin(gateway.url, "DELETE", f"/admin/keys/{made['id']}").status_code == 200
    revoked = embed(gateway.url, doomed, input=TEN_TOKENS)
    assert revoked.status_code == 401 and error_code(revoked) == "invalid_api_key", revoked.text
    bad_body = httpx.post(gateway.url + "/v1/embeddings", content=b"{not json",
                          headers={"Authorization": f"Bearer {doomed}"})
    assert bad_body.status_code == 401  # a 400 waits for the key's read too
    after = embed(gateway.url, other, input=TEN_TOKENS)
    # The team saw the first request and this one: the revoked key's two tries cost it nothing.
    assert rate_limit_pair(after, "requests")[1] == "8", after.headers
    assert rate_limit_pair(after, "tokens")[1] == "980", after.headers


def test_a_remembered_key_changed_since_is_served_as_the_store_has_it(gateway: ThreadedServer) -> None:
    made = create_key(gateway.url, limits={"rpm": 100})
    key, path = made["key"], f"/admin/keys/{made['id']}"
    assert embed(gateway.url, key).status_code == 200
    assert admin(gateway.url, "PATCH", path, json={"limits": {"rpm": 1}}).status_code == 200
    limited = embed(gateway.url, key)  # as remembered (rpm 100) it would pass; as stored it has used its one
    assert limited.status_code == 429 and rate_limit_pair(limited, "requests")[:2] == ("1", "0"), limited.headers
    assert admin(gateway.url, "PATCH", path, json={"limits": {"rpm": 100}, "models": ["ada"]}).status_code == 200
    denied = embed(gateway.url, key)
    assert denied.status_code == 403 and error_code(denied) == "model_not_allowed"
    served = embed(gateway.url, key, model="ada")
    # One request served before, one now: the refused ones in between charged nothing.
    assert served.status_code == 200 and rate_limit_pair(served, "requests")[1] == "98", served.headers

