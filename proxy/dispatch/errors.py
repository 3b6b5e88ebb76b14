"""The one table from what went wrong at a backend to what the client sees."""

from __future__ import annotations

from providers.base import ErrorKind, ProviderError
from proxy.errors import GatewayError, InvalidRequest, ServiceUnavailable, UpstreamError, UpstreamTimeout

_KIND_TO_ERROR: dict[ErrorKind, tuple[type[GatewayError], str]] = {
    ErrorKind.BAD_REQUEST: (InvalidRequest, "upstream_invalid_request"),
    ErrorKind.AUTH: (UpstreamError, "upstream_auth_failed"),
    ErrorKind.BILLING: (UpstreamError, "upstream_payment_required"),
    ErrorKind.RATE_LIMITED: (ServiceUnavailable, "upstream_rate_limited"),
    ErrorKind.OVERLOADED: (ServiceUnavailable, "overloaded"),
    ErrorKind.UNAVAILABLE: (UpstreamError, "upstream_unavailable"),
    ErrorKind.TIMEOUT: (UpstreamTimeout, "upstream_timeout"),
    ErrorKind.BAD_RESPONSE: (UpstreamError, "upstream_bad_response"),
}


def to_gateway_error(err: ProviderError, input_index: int | None = None) -> GatewayError:
    """`input_index`: the position, among the inputs the gateway dispatched, of the input the backend blamed."""
    cls, code = _KIND_TO_ERROR[err.kind]
    headers = {"Retry-After": f"{max(1, round(err.retry_after))}"} if err.retry_after else None
    error = cls(err.message, code=code, headers=headers)
    error.input_index = input_index
    return error
