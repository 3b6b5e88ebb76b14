"""One error family for the whole gateway, rendered in one place in OpenAI's shape.

Every failure a client can see is a `GatewayError`; `error_body` is the only
place that turns one into `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from pydantic import BaseModel, Field


class GatewayError(Exception):
    """Base of every client-visible error. Subclasses fix status and type."""

    status: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})
        # For an input the backend refused: its position among the inputs that were dispatched, so the
        # layers above can name the client's own `input[i]`.
        self.input_index: int | None = None


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    default_code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QuotaExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class UpstreamError(GatewayError):
    """The backend answered with something unusable (5xx, bad payload, auth failure)."""

    status = 502
    type = "upstream_error"
    default_code = "bad_gateway"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    default_code = "upstream_timeout"


class InternalError(GatewayError):
    status = 500
    type = "server_error"
    default_code = "internal_error"


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(description="The error family, e.g. `invalid_request_error`, `rate_limit_error`.")
    param: str | None = Field(description="The request field at fault (`input[3]`), if any.")
    code: str | None = Field(description="A stable, machine-readable code, e.g. `model_not_found`.")


class ErrorResponse(BaseModel):
    """OpenAI's error shape: every failure a client can see has this body."""

    error: ErrorDetail


def error_object(err: GatewayError) -> dict[str, object]:
    """`ErrorResponse` as a plain dict: every error leaves through here, so it skips model validation."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps(error_object(err))
