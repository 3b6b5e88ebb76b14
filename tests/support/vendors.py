"""What the end-to-end tests of each vendor share: a client, the known-vector check, the scrubbed-error check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import openai
import pytest

from tests.support.assertions import assert_openai_error
from tests.support.http import Reply, embed_ok
from tests.support.servers import ThreadedServer


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
