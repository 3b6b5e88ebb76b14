"""The admin API and `embedgate keys|teams|usage`, end to end against a served gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from proxy.cli import main
from proxy.settings import DispatchSettings
from testkit.openai_upstream import FakeOpenAI
from testkit.servers import ThreadedServer
from tests.conftest import running_gateway, start_gateway, upstream_settings
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
    ten_tokens,
)


@pytest.fixture
def gateway(fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    server = start_gateway(upstream_settings(fake_openai, auth={"master_key": MASTER_KEY}))
    yield server
    server.stop()


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> Any:
    code = main([*argv, "--url", url, "--master-key", MASTER_KEY])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_admin_needs_the_master_key(gateway: ThreadedServer) -> None:
    assert admin(gateway.url, "GET", "/admin/keys", master="wrong").status_code == 401
    key = create_key(gateway.url)["key"]
    assert admin(gateway.url, "GET", "/admin/keys", master=key).status_code == 401  # a team key is no admin


def test_key_lifecycle(gateway: ThreadedServer) -> None:
    created = create_key(gateway.url, name="indexer", limits={"rpm": 600})
    listed = admin(gateway.url, "GET", "/admin/keys?team=search").json()["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and listed[0]["redacted"].startswith("eg-")
    got = admin(gateway.url, "GET", f"/admin/keys/{created['id']}").json()
    assert got["limits"]["rpm"] == 600 and got["name"] == "indexer"

    patched = admin(gateway.url, "PATCH", f"/admin/keys/{created['id']}",
                    json={"limits": {"rpm": 1}, "models": ["ada"], "name": "renamed"}).json()
    assert (patched["limits"]["rpm"], patched["models"], patched["name"]) == (1, ["ada"], "renamed")
    assert embed(gateway.url, created["key"], model="ada").status_code == 200
    assert embed(gateway.url, created["key"], model="ada").status_code == 429  # the patched limit holds at once

    assert admin(gateway.url, "DELETE", f"/admin/keys/{created['id']}").json()["deleted"] is True
    assert admin(gateway.url, "GET", f"/admin/keys/{created['id']}").status_code == 404
    assert admin(gateway.url, "GET", "/admin/keys?team=search").json()["data"] == []


def test_bad_admin_bodies_are_400(gateway: ThreadedServer) -> None:
    for body in ({"team": "bad team"}, {"team": "x", "limits": {"rpm": -1}}, {"team": "x", "colour": "red"}, {}):
        resp = admin(gateway.url, "POST", "/admin/keys", json=body)
        assert resp.status_code == 400, (body, resp.text)
    assert admin(gateway.url, "PUT", "/admin/teams/t", json={"limits": {"qps": 3}}).status_code == 400
    assert admin(gateway.url, "GET", "/admin/teams/nobody").status_code == 404


def test_expires_at_is_epoch_seconds_or_an_iso_time(gateway: ThreadedServer) -> None:
    """Found by tests/test_contract.py: `"expires_at": "1"` made a key (pydantic reads digits as epoch
    seconds), though the document says an integer or an ISO 8601 time."""
    for value, expires_at in ((1893456000, 1893456000), ("2030-01-01T00:00:00Z", 1893456000),
                              ("2030-01-01 01:00+01:00", 1893456000), ("2030-01-01T00:00:00", 1893456000)):
        assert create_key(gateway.url, expires_at=value)["expires_at"] == expires_at, value
    for value in ("1", "1893456000", "2030-01-01", "tomorrow", "2030-13-01T00:00:00"):
        resp = admin(gateway.url, "POST", "/admin/keys", json={"team": "search", "expires_at": value})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "expires_at", (value, resp.text)


def test_team_and_user_limits(gateway: ThreadedServer) -> None:
    team = put_team(gateway.url, "search", limits={"rpm": 100}, user_limits={"rpm": 1})
    assert team["limits"]["rpm"] == 100 and team["user_limits"]["rpm"] == 1
    key = create_key(gateway.url)["key"]
    assert embed(gateway.url, key, user="alice").status_code == 200
    over = embed(gateway.url, key, user="alice")
    assert over.status_code == 429 and "user 'alice'" in over.json()["error"]["message"]
    assert int(over.headers["Retry-After"]) >= 1
    assert embed(gateway.url, key, user="bob").status_code == 200


def test_rate_limit_headers_on_success_and_on_errors(gateway: ThreadedServer) -> None:
    key = create_key(gateway.url, limits={"rpm": 10, "tpm": 1000})["key"]
    ok = embed(gateway.url, key, input=TEN_TOKENS)
    assert ok.status_code == 200
    assert (ok.headers["x-ratelimit-limit-requests"], ok.headers["x-ratelimit-remaining-requests"]) == ("10", "9")
    assert (ok.headers["x-ratelimit-limit-tokens"], ok.headers["x-ratelimit-remaining-tokens"]) == ("1000", "990")
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    bad = embed(gateway.url, key, dimensions=0)  # a 400 after authentication reports the limits and counts
    assert bad.status_code == 400 and bad.headers["x-ratelimit-remaining-requests"] == "8"
    assert bad.headers["x-ratelimit-remaining-tokens"] == "990"  # but charges no tokens


def test_refused_requests_count_against_the_team_rpm(gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    put_team(gateway.url, "search", limits={"rpm": 3})
    key = create_key(gateway.url)["key"]
    bad_json = httpx.post(gateway.url + "/v1/embeddings", content=b"{not json",
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    refused = [bad_json, embed(gateway.url, key, input=""), embed(gateway.url, key, dimensions=65)]
    assert [r.status_code for r in refused] == [400, 400, 400], [r.text for r in refused]
    assert refused[-1].headers["x-ratelimit-remaining-requests"] == "0"
    for resp in (embed(gateway.url, key, dimensions=0), embed(gateway.url, key)):  # one refused more, one valid
        assert resp.status_code == 429 and error_code(resp) == "rate_limit_exceeded", resp.text
        assert "team 'search'" in resp.json()["error"]["message"]
    assert fake_openai.received == []


def test_both_rate_limit_pairs_are_always_sent(gateway: ThreadedServer) -> None:
    """As OpenAI does: requests and tokens, on success and on errors; a pair with no limit says so."""
    rpm_only = create_key(gateway.url, limits={"rpm": 10})["key"]
    ok = embed(gateway.url, rpm_only, input=TEN_TOKENS)
    assert ok.status_code == 200
    assert rate_limit_pair(ok, "requests")[:2] == ("10", "9") and rate_limit_pair(ok, "tokens") == NO_LIMIT_PAIR
    unlimited = create_key(gateway.url, team="free")["key"]
    for resp, status in ((embed(gateway.url, unlimited, input=TEN_TOKENS), 200),
                         (embed(gateway.url, unlimited, dimensions=0), 400)):
        assert resp.status_code == status
        assert rate_limit_pair(resp, "requests") == rate_limit_pair(resp, "tokens") == NO_LIMIT_PAIR


def test_a_failed_backend_call_refunds_its_tokens(gateway: ThreadedServer, fake_openai: FakeOpenAI) -> None:
    key = create_key(gateway.url, limits={"tpm": 100})["key"]
    assert embed(gateway.url, key, input=TEN_TOKENS).headers["x-ratelimit-remaining-tokens"] == "90"
    fake_openai.fail_next(500, DispatchSettings().max_attempts)
    failed = embed(gateway.url, key, input=ten_tokens(1))
    assert failed.status_code >= 500 and failed.headers["x-ratelimit-limit-tokens"] == "100"
    assert embed(gateway.url, key, input=ten_tokens(2)).headers["x-ratelimit-remaining-tokens"] == "80"


def test_usage_per_day_and_in_total(gateway: ThreadedServer) -> None:
    a = create_key(gateway.url)
    b = create_key(gateway.url, team="other")
    for _ in range(2):
        embed(gateway.url, a["key"], input=TEN_TOKENS, user="alice")
    embed(gateway.url, a["key"], model="ada", input=TEN_TOKENS)
    embed(gateway.url, b["key"], input=TEN_TOKENS)
    today = datetime.now(UTC).date().isoformat()

    def usage(**query: str) -> dict[str, Any]:
        resp = admin(gateway.url, "GET", "/admin/usage", params={"start": today, **query})
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    # alice's second request is a cache hit; team other's is not: cache entries are per team.
    everything = usage()
    assert everything["total"] == {"requests": 4, "tokens": 40, "cache_hits": 1}
    assert everything["data"] == [{"date": today, "requests": 4, "tokens": 40, "cache_hits": 1}]
    assert usage(team="search")["total"]["requests"] == 3
    assert usage(user="alice")["total"] == {"requests": 2, "tokens": 20, "cache_hits": 1}
    assert usage(model="ada")["total"]["requests"] == 1
    assert usage(key=b["id"])["total"]["requests"] == 1
    assert admin(gateway.url, "GET", "/admin/usage", params={"start": "2024-13-01"}).status_code == 400


def test_usage_dates_are_full_dates(gateway: ThreadedServer) -> None:
    """Found by tests/test_contract.py: `?start=` was served as if absent, though the document says a date."""
    for query, param in (({"start": ""}, "start"), ({"end": ""}, "end"), ({"end": "20240531"}, "end"),
                         ({"start": "2024-5-31"}, "start"), ({"end": "2024-02-30"}, "end")):
        resp = admin(gateway.url, "GET", "/admin/usage", params=query)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (query, resp.text)
        assert error_code(resp) == "invalid_value"


def test_the_cli_drives_the_admin_api(gateway: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    created = cli(capsys, gateway.url, "keys", "create", "--team", "search", "--name", "cli", "--rpm", "5",
                  "--model", "text-embedding-3-small")
    assert created["limits"]["rpm"] == 5 and created["models"] == ["text-embedding-3-small"]
    assert embed(gateway.url, created["key"], input=TEN_TOKENS).status_code == 200

    listed = cli(capsys, gateway.url, "keys", "list", "--team", "search")
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    team = cli(capsys, gateway.url, "teams", "set", "search", "--tpm", "1000", "--user-rpm", "3")
    assert (team["limits"]["tpm"], team["user_limits"]["rpm"]) == (1000, 3)
    assert cli(capsys, gateway.url, "teams", "show", "search")["limits"]["tpm"] == 1000
    usage = cli(capsys, gateway.url, "usage", "--team", "search")
    assert usage["total"]["tokens"] == 10

    cli(capsys, gateway.url, "keys", "revoke", created["id"])
    assert embed(gateway.url, created["key"]).status_code == 401


def test_the_cli_reports_refusals(gateway: ThreadedServer, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDGATE_MASTER_KEY", "wrong")
    assert main(["keys", "list", "--url", gateway.url]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    monkeypatch.setenv("EMBEDGATE_MASTER_KEY", MASTER_KEY)
    assert main(["keys", "revoke", "key_nope", "--url", gateway.url]) == 1
    assert "HTTP 404" in capsys.readouterr().err


@pytest.mark.parametrize(("charge_hits", "remaining"), [(True, "70"), (False, "80")])
def test_cache_hits_are_charged_per_cache_charge_hits(fake_openai: FakeOpenAI, charge_hits: bool,
                                                      remaining: str) -> None:
    settings = upstream_settings(fake_openai, auth={"master_key": MASTER_KEY}, cache={"charge_hits": charge_hits})
    with running_gateway(settings) as gateway:
        key = create_key(gateway.url, limits={"tpm": 100})
        assert embed(gateway.url, key["key"], input=TEN_TOKENS).headers["x-embedgate-cache"] == "miss"
        assert embed(gateway.url, key["key"], input=TEN_TOKENS).headers["x-embedgate-cache"] == "hit"
        other = embed(gateway.url, key["key"], input=ten_tokens(1))
        assert other.headers["x-ratelimit-remaining-tokens"] == remaining
        usage = admin(gateway.url, "GET", "/admin/usage", params={"key": key["id"]}).json()["total"]
        assert usage == {"requests": 3, "tokens": 30, "cache_hits": 1}


def test_a_request_larger_than_a_whole_limit_is_400_not_429(gateway: ThreadedServer) -> None:
    """Issue 11 item 15: no Retry-After can help a request larger than the limit itself."""
    created = create_key(gateway.url)
    steps = [({"tpm": 20}, {}, {}, 3, "tokens per minute (tpm) limit of 20 on this API key"),
             ({}, {"tokens_per_day": 25}, {}, 3, "tokens per day (tokens_per_day) limit of 25 on team 'search'"),
             ({}, {}, {"tokens_per_month": 15}, 2,
              "tokens per month (tokens_per_month) limit of 15 on user 'alice' of team 'search'")]
    for key_limits, team_limits, user_limits, inputs, named in steps:
        admin(gateway.url, "PATCH", f"/admin/keys/{created['id']}", json={"limits": key_limits})
        put_team(gateway.url, "search", limits=team_limits, user_limits=user_limits)
        refused = embed(gateway.url, created["key"], input=[ten_tokens(i) for i in range(inputs)], user="alice")
        error = refused.json()["error"]
        assert (refused.status_code, error["code"], error["param"]) == (400, "request_exceeds_limit", "input"), error
        assert f"{inputs * 10} tokens exceed the {named}" in error["message"], error["message"]
        assert created["key"] not in refused.text and created["id"] not in refused.text
        assert "Retry-After" not in refused.headers
    fits = embed(gateway.url, created["key"], input=TEN_TOKENS, user="alice")
    assert fits.status_code == 200 and fits.headers["x-ratelimit-remaining-tokens"] == "5"  # nothing else was charged
