"""Raw HTTP edge cases: every one answers in OpenAI's error shape, never HTML or a traceback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from proxy.settings import DispatchSettings
from testkit.openai_upstream import FakeOpenAI
from testkit.servers import ThreadedServer, free_port
from tests.conftest import running_gateway


def assert_error(resp: httpx.Response, status: int, code: str | None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and "Traceback" not in error["message"]


@pytest.fixture
def small_body_gateway(fake_openai: FakeOpenAI) -> Iterator[ThreadedServer]:
    with running_gateway({
        "server": {"max_body_bytes": 4096},
        "models": [{"name": "m", "provider": "openai", "api_base": fake_openai.url, "api_key": fake_openai.api_key}],
    }) as server:
        yield server


def test_body_over_the_limit_is_413(small_body_gateway: ThreadedServer) -> None:
    resp = httpx.post(small_body_gateway.url + "/v1/embeddings", json={"model": "m", "input": "x" * 10_000})
    assert_error(resp, 413, "request_too_large")


def test_chunked_body_over_the_limit_is_413(small_body_gateway: ThreadedServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "input": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    resp = httpx.post(small_body_gateway.url + "/v1/embeddings", content=chunks(),
                      headers={"Content-Type": "application/json"})
    assert_error(resp, 413, "request_too_large")


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"null", b"\xff\xfe", b'{"model": "small", "input": "x",}'])
def test_malformed_json_is_400(upstream_gateway: ThreadedServer, body: bytes) -> None:
    resp = httpx.post(upstream_gateway.url + "/v1/embeddings", content=body,
                      headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_json")


def test_wrong_content_type_is_415(upstream_gateway: ThreadedServer) -> None:
    resp = httpx.post(upstream_gateway.url + "/v1/embeddings", data={"model": "small", "input": "x"})
    assert_error(resp, 415, "unsupported_media_type")


def test_wrong_method_is_405(upstream_gateway: ThreadedServer) -> None:
    resp = httpx.get(upstream_gateway.url + "/v1/embeddings")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


def test_unknown_path_is_404_json(upstream_gateway: ThreadedServer) -> None:
    assert_error(httpx.get(upstream_gateway.url + "/v2/whatever"), 404, "unknown_url")


def test_embeddings_without_v1_prefix(upstream_gateway: ThreadedServer) -> None:
    resp = httpx.post(upstream_gateway.url + "/embeddings", json={"model": "small", "input": "x"})
    assert resp.status_code == 200
    assert resp.json()["data"][0]["object"] == "embedding"


@pytest.mark.parametrize(
    ("status", "expected_status", "code"),
    [(500, 502, "upstream_unavailable"), (503, 502, "upstream_unavailable"),
     (429, 503, "upstream_rate_limited"), (400, 400, "upstream_invalid_request"),
     (401, 502, "upstream_auth_failed")],
)
def test_upstream_errors_become_openai_errors(upstream_gateway: ThreadedServer, fake_openai: FakeOpenAI,
                                              status: int, expected_status: int, code: str) -> None:
    # Every try fails (retryable statuses are tried max_attempts times; the others once).
    fake_openai.fail_next(status, DispatchSettings().max_attempts,
                          body={"error": {"message": f"boom with key {fake_openai.api_key}"}})
    resp = httpx.post(upstream_gateway.url + "/v1/embeddings", json={"model": "small", "input": "x"})
    assert_error(resp, expected_status, code)
    assert fake_openai.api_key not in resp.text  # the upstream key never reaches a client


def test_upstream_timeout_is_504(fake_openai: FakeOpenAI) -> None:
    fake_openai.delay = 1.0
    one_model(fake_openai.url, "upstream_timeout", 504, timeout=0.2, api_key=fake_openai.api_key)


def test_unreachable_upstream_is_502() -> None:
    one_model(f"http://127.0.0.1:{free_port()}/v1", "upstream_unavailable", 502)


def one_model(api_base: str, code: str, status: int, **options: object) -> None:
    """A gateway with one upstream model: one request to it fails with `status` and `code`."""
    config = {"models": [{"name": "m", "provider": "openai", "api_base": api_base, **options}]}
    with running_gateway(config) as server:
        assert_error(httpx.post(server.url + "/v1/embeddings", json={"model": "m", "input": "x"}), status, code)


def test_health_ready_and_metrics(upstream_gateway: ThreadedServer) -> None:
    assert httpx.get(upstream_gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(upstream_gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["store"] is True
    httpx.post(upstream_gateway.url + "/v1/embeddings", json={"model": "small", "input": "x"})
    metrics = httpx.get(upstream_gateway.url + "/metrics").text
    assert 'embedgate_requests_total{model="text-embedding-3-small",status="200",team="none"} 1.0' in metrics
    assert "sk-upstream" not in metrics
