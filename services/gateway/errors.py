"""Errors the gateway answers with, each carrying its HTTP status and OpenAI error fields.

Every failure a client sees has OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, so the official clients raise their usual exceptions (``BadRequestError``,
``AuthenticationError``, ``NotFoundError``, ...) with the message below.
"""

from __future__ import annotations

from typing import Any

from undertow.errors import UndertowError


class GatewayError(UndertowError):
    """A request the gateway refuses or cannot serve; ``status`` is the HTTP status to send."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = {}
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return error_body(self.message, self.type, param=self.param, code=self.code)


class InvalidRequest(GatewayError):
    """Malformed JSON, a field of the wrong type or value, too many tokens asked for."""

    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    """No API key, or one the gateway does not know."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    """The request names a model this gateway does not serve."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    """The request body is larger than ``max_request_bytes``."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BackendUnavailable(GatewayError):
    """The model is not loaded yet, or the backend cannot take the request."""

    status = 503
    type = "server_error"
    code = "backend_unavailable"


class UpstreamError(GatewayError):
    """The upstream server failed or answered with something that is not OpenAI's API."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    """The upstream server did not answer in time."""

    status = 504
    code = "upstream_timeout"


class UpstreamRejected(GatewayError):
    """The upstream refused the request with a 4xx; relayed with its status and message."""

    type = "invalid_request_error"

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
