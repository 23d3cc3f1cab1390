"""One error tree; OpenAI-shaped error bodies are built here and nowhere else.

    AndyError
    ├── APIError            an answer for an HTTP client: status, type, code, message
    └── ConfigError         a setting that cannot be used; the CLI turns it into exit code 2

``APIError`` instances are raised from anywhere in the coordinator and rendered by one
middleware as ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from typing import Any


class AndyError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(AndyError):
    """A configuration value is missing or invalid; the message names the setting."""


class APIError(AndyError):
    """An error answered to an OpenAI API client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or is not served by any host of this pool. "
        "GET /api/andy/v1/models lists the models available now.",
        code="model_not_found",
        param="model",
    )


def no_available_hosts(model: str, retry_after: int = 5) -> APIError:
    return APIError(
        503,
        f"No available hosts for model `{model}` right now; retry shortly.",
        type="server_error",
        code="no_available_hosts",
        headers={"Retry-After": str(retry_after)},
    )


def backend_error(status: int, message: str) -> APIError:
    if status == 400 and "context" in message.lower() and (
        "exceed" in message.lower() or "too long" in message.lower()
    ):
        return APIError(400, message, code="context_length_exceeded", param="messages")
    if 400 <= status < 500 and status not in (408, 429):
        return APIError(status, message, code="backend_rejected")
    return APIError(502, f"Backend error: {message}", type="server_error", code="backend_error")


def timeout_error(message: str) -> APIError:
    return APIError(504, message, type="server_error", code="timeout")
