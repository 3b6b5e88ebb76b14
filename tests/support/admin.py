"""Small sync helpers over the admin API and the embeddings endpoint, for end-to-end tests."""

from __future__ import annotations

from typing import Any

import httpx

from proxy.quota import UNLIMITED

MASTER_KEY = "mk-test-master-key-0123456789"


def ten_tokens(seed: int = 0) -> list[int]:
    """An input of exactly ten tokens, whatever the tokenizer; another seed, another input (no cache hit)."""
    return [seed * 10 + t for t in range(1, 11)]


TEN_TOKENS = ten_tokens()


def admin(url: str, method: str, path: str, master: str = MASTER_KEY, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {master}"}, timeout=30, **kwargs)


def create_key(url: str, team: str = "search", **body: Any) -> dict[str, Any]:
    resp = admin(url, "POST", "/admin/keys", json={"team": team, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def put_team(url: str, team: str, **body: Any) -> dict[str, Any]:
    resp = admin(url, "PUT", f"/admin/teams/{team}", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def embed(url: str, key: str | None, model: str = "text-embedding-3-small", input: Any = "hello",
          **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/embeddings", json={"model": model, "input": input, **extra}, headers=headers,
                      timeout=30)


def error_code(resp: httpx.Response) -> str | None:
    return resp.json()["error"]["code"]  # type: ignore[no-any-return]


def rate_limit_pair(resp: httpx.Response, name: str) -> tuple[str, str, str]:
    """(limit, remaining, reset) of the `requests` or `tokens` pair of rate-limit headers."""
    return tuple(resp.headers[f"x-ratelimit-{part}-{name}"] for part in ("limit", "remaining", "reset"))  # type: ignore[return-value]


NO_LIMIT_PAIR = (str(UNLIMITED), str(UNLIMITED), "0s")  # what a pair says where no limit applies
