"""A large answer end to end, on real ports: read from the upstream as it arrives (providers/openai_answer.py)
and written to the client a piece at a time (proxy/render.py `Pieces`), to the same vectors as any answer."""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import orjson
import pytest

from providers.openai_answer import FAST_FROM_BYTES
from proxy.render import PIECE_VALUES, PIECES_FROM
from testkit.openai_upstream import FakeOpenAI, expected_vector
from testkit.servers import ThreadedServer
from tests.conftest import running_gateway, serving_openai, upstream_settings

DIMS = 512
COUNT = 1200  # 614,400 values: rendered in pieces, three of them; the upstream's answer far above FAST_FROM_BYTES
TEXTS = [f"large answer row {i}" for i in range(COUNT)]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[ThreadedServer, FakeOpenAI]]:
    assert COUNT * DIMS >= PIECES_FROM and COUNT * DIMS > 2 * PIECE_VALUES and COUNT * DIMS * 4 > FAST_FROM_BYTES
    with serving_openai(FakeOpenAI(dims=DIMS)) as fake, running_gateway(upstream_settings(fake)) as server:
        yield server, fake


def post(server: ThreadedServer, encoding_format: str) -> httpx.Response:
    response = httpx.post(f"{server.url}/v1/embeddings", timeout=60,
                          json={"model": "small", "input": TEXTS, "encoding_format": encoding_format})
    assert response.status_code == 200, response.text[:300]
    return response


def assert_rows(vectors: np.ndarray) -> None:
    np.testing.assert_allclose(vectors, [expected_vector(t, native=DIMS) for t in TEXTS], rtol=1e-6, atol=1e-7)


def test_a_base64_answer_is_written_in_pieces_with_its_length(gateway: tuple[ThreadedServer, FakeOpenAI]) -> None:
    server, fake = gateway
    response = post(server, "base64")
    assert fake.received[-1].encoding_format == "base64"  # the upstream's answer was base64 too: the fast read
    assert response.headers["content-length"] == str(len(response.content))
    assert "transfer-encoding" not in response.headers and response.headers["x-request-id"]
    body = orjson.loads(response.content)
    assert [item["index"] for item in body["data"]] == list(range(COUNT))
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert_rows(np.array([np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in body["data"]]))


def test_a_float_answer_is_written_in_chunks(gateway: tuple[ThreadedServer, FakeOpenAI]) -> None:
    """Its length is known only once written: HTTP/1.1 chunked transfer, which every client reads."""
    server, _ = gateway
    response = post(server, "float")
    assert response.headers["transfer-encoding"] == "chunked" and "content-length" not in response.headers
    body = orjson.loads(response.content)
    assert [item["index"] for item in body["data"]] == list(range(COUNT))
    assert_rows(np.array([item["embedding"] for item in body["data"]], np.float32))


@pytest.mark.parametrize("encoding_format", [None, "float"])  # None: the SDK's default, base64 it decodes itself
def test_the_openai_sdk_reads_a_large_answer(gateway: tuple[ThreadedServer, FakeOpenAI],
                                             encoding_format: str | None) -> None:
    server, fake = gateway
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    if encoding_format is None:
        result = client.embeddings.create(model="small", input=TEXTS)
    else:
        result = client.embeddings.create(model="small", input=TEXTS, encoding_format="float")
    assert fake.received[-1].encoding_format == "base64"  # the gateway asks its upstream for base64 either way
    assert_rows(np.array([item.embedding for item in result.data], np.float32))


def test_a_client_that_hangs_up_mid_answer_leaves_the_gateway_serving(
        gateway: tuple[ThreadedServer, FakeOpenAI], caplog: pytest.LogCaptureFixture) -> None:
    server, _ = gateway
    request = orjson.dumps({"model": "small", "input": TEXTS, "encoding_format": "float"})
    host, port = server.url.removeprefix("http://").split(":")
    with caplog.at_level(logging.ERROR), socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(request), request))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the headers and the first piece's start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    assert_rows(np.array([np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
                          for item in orjson.loads(post(server, "base64").content)["data"]]))
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
