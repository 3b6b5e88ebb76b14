"""Vendor translation tests: the documented JSON shapes (fixtures), and what a vendor's error body becomes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from providers.base import EmbedResult, ErrorKind, ProviderError
from providers.http import HttpClient
from testkit.servers import ROOT

FIXTURES = ROOT / "tests" / "providers" / "fixtures"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def vendor_error(status: int, body: Any, secret: str = "", headers: dict[str, str] | None = None) -> ProviderError:
    """The error the shared HTTP client makes of a vendor's answer `status` with `body`."""
    return vendor_error_text(status, orjson.dumps(body).decode(), secret, headers)


def vendor_error_text(status: int, body: str, secret: str = "", headers: dict[str, str] | None = None) -> ProviderError:
    """The same for an error body that is not JSON (a proxy's HTML page, a plain-text message)."""
    return HttpClient._status_error(status, body.encode(), headers or {}, (secret,) if secret else ())


def assert_bad_response(from_payload: Callable[[Any, int], EmbedResult], body: Any, expected: int = 2) -> None:
    """`from_payload` refuses `body` as an answer not in the documented shape."""
    with pytest.raises(ProviderError) as exc:
        from_payload(body, expected)
    assert exc.value.kind is ErrorKind.BAD_RESPONSE
