"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

import openai
import pytest


def assert_openai_error(exc_info: pytest.ExceptionInfo[openai.APIStatusError], status: int,
                        param: str | None, code: str | None) -> dict[str, Any]:
    """The SDK raised for an OpenAI-shaped error with this status, param and code."""
    err = exc_info.value
    assert err.status_code == status, err.message
    body = err.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]
