"""The shared HTTP client's mapping of upstream answers: status codes to error kinds, what text is relayed."""

from __future__ import annotations

import pytest

from providers.base import RETRYABLE, ErrorKind
from proxy.dispatch.errors import to_gateway_error
from tests.support.vendor_shapes import vendor_error, vendor_error_text


@pytest.mark.parametrize(("status", "kind", "client_status", "code"), [
    (400, ErrorKind.BAD_REQUEST, 400, "upstream_invalid_request"),
    (402, ErrorKind.BILLING, 502, "upstream_payment_required"),  # the operator's account, not the client's input
    (408, ErrorKind.TIMEOUT, 504, "upstream_timeout"),  # the upstream gave up waiting: retryable
    (409, ErrorKind.UNAVAILABLE, 502, "upstream_unavailable"),  # a conflict in the vendor's state: retryable
    (429, ErrorKind.RATE_LIMITED, 503, "upstream_rate_limited"),
    (503, ErrorKind.UNAVAILABLE, 502, "upstream_unavailable"),
])
def test_upstream_statuses_map_to_what_they_mean(status: int, kind: ErrorKind, client_status: int, code: str) -> None:
    """Issue 11 item 12: 402, 408 and 409 are not something the client can fix by changing its request."""
    error = vendor_error(status, {"error": {"message": "nope"}})
    assert error.kind is kind
    assert (kind in RETRYABLE) == (status in (408, 409, 429, 503))
    gateway = to_gateway_error(error)
    assert (gateway.status, gateway.code) == (client_status, code)


SECRET = "sk-upstream-secret-key-1234"


@pytest.mark.parametrize("shape", ["json", "text"])
def test_a_secret_cut_by_the_truncation_never_leaks(shape: str) -> None:
    """Issue 11 item 11: scrubbed before truncating, so no fragment of a secret survives at the cut."""
    for cut in range(2, len(SECRET)):  # the message is cut somewhere inside the secret
        text = "x" * (500 - cut if shape == "json" else 200 - cut) + SECRET + " and more"
        body: object = {"error": {"message": text}} if shape == "json" else None
        error = vendor_error(400, body, secret=SECRET) if body else vendor_error_text(400, text, SECRET)
        assert SECRET[:cut] not in error.message, cut
