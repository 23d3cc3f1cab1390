"""One error tree; OpenAI-shaped error bodies are built here and nowhere else.

    AndyError
    ├── ConfigError         a setting that cannot be used; the CLI turns it into exit code 2
    ├── APIError            an answer for an HTTP client: status, type, code, message
    │   └── StreamBroken    a job failed after content was sent, and no host could continue it
    ├── ProtocolError       a websocket frame that is not a valid message (also a ValueError)
    │   └── VersionError    a hello of a protocol version this side does not speak
    ├── BackendError        a host's backend answered with an error (status, message)
    │   └── BackendUnavailable  ...or could not be reached at all
    ├── FrameTooLarge       a frame over the coordinator's limit: its job fails instead
    ├── Refused             the coordinator refused this host for good (the agent exits 78)
    ├── ListenError         the coordinator cannot listen where it was told (exit code 2)
    ├── ManagedError        a managed llama-server could not be started
    ├── ModelError          a model file could not be found or fetched
    ├── BuildError          llama-server could not be built
    └── InstallError        ``service install`` cannot go on

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


class ProtocolError(AndyError, ValueError):
    """A frame that is not a valid message; the text says what is wrong."""


class VersionError(ProtocolError):
    """A hello of a protocol version this side does not speak."""


class BackendError(AndyError):
    """The backend answered with an error (status and message as it gave them; ``code``
    one of the protocol's error codes, which the coordinator turns into its own words)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, code: str | None = None,
                 prompt_tokens: int | None = None, context: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.code = code
        self.prompt_tokens = prompt_tokens  # a context overflow's counts, when the backend gave them
        self.context = context


class BackendUnavailable(BackendError):
    """The backend could not be reached at all."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message)


class FrameTooLarge(AndyError, ValueError):
    """A frame over the coordinator's limit: the job it belongs to fails instead."""


class Refused(AndyError):
    """The coordinator refused this host for a reason retrying cannot mend."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the coordinator refused this host ({code}): {reason}")
        self.code = code
        self.reason = reason


class ListenError(AndyError):
    """The coordinator cannot open its listening socket; the message names the fix."""


class ManagedError(AndyError):
    """llama-server could not be started; the message names the fix."""


class ModelError(AndyError):
    """The model could not be found or installed; the message names the fix."""


class BuildError(AndyError):
    """The llama-server build could not complete; the message names the step."""


class InstallError(AndyError):
    """Install cannot go on; the message names the fix."""


class StreamBroken(APIError):
    """The job failed after content was sent and no host could continue it: a stream
    ends with this as its error event (never ``[DONE]``)."""

    def __init__(self, message: str) -> None:
        super().__init__(502, message, type="server_error", code="stream_interrupted")


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
        "GET /api/andy/v1/models lists the models available now (with an API key; /api/andy/pool_status "
        "lists them to anyone).",
        code="model_not_found",
        param="model",
    )


def no_available_hosts(model: str, retry_after: int = 5, trusted_only: bool = False) -> APIError:
    which = "trusted hosts (this key is limited to them)" if trusted_only else "hosts"
    return APIError(
        503,
        f"No available {which} for model `{model}` right now; retry shortly.",
        type="server_error",
        code="no_available_hosts",
        headers={"Retry-After": str(retry_after)},
    )


CONTEXT_EXCEEDED = "context_length_exceeded"  # also in protocol.py: the codes a host may give
CANNOT_EMBED = "model_cannot_embed"


def says_context_exceeded(message: str) -> bool:
    """A backend's words for "the prompt does not fit the context" (llama.cpp, Ollama)."""
    text = message.lower()
    # Ollama: "the prompt is longer than the context length currently available to the model"
    return "context" in text and ("exceed" in text or "too long" in text or "longer than the context" in text)


def context_exceeded(context: int | None = None, prompt_tokens: int | None = None,
                     estimated: bool = False) -> APIError:
    """400 ``context_length_exceeded`` in the coordinator's words, with the counts when
    known: ``context`` (tokens per request the hosts serve), ``prompt_tokens`` (the
    backend's count, or with ``estimated`` the coordinator's lower bound from characters)."""
    if context:
        text = f"This model's context is {context} tokens per request on the hosts serving it"
    else:
        text = "The prompt does not fit in the model's context on the hosts serving it"
    if prompt_tokens:
        text += f"; your prompt is {'at least ' if estimated else ''}{prompt_tokens} tokens"
    return APIError(400, text + ". Shorten the messages.", code=CONTEXT_EXCEEDED,
                    param="messages")


def backend_error(status: int, code: str | None = None, prompt_tokens: int | None = None,
                  context: int | None = None) -> APIError:
    """The client's error for a host's failure. The words are the coordinator's own:
    a host's text never reaches a client (it goes to the log, with the host's id); of a
    context overflow, only the counts (integers, bounded by the protocol) do."""
    if status == 400 and code == CONTEXT_EXCEEDED:
        return context_exceeded(context, prompt_tokens)
    if status == 400 and code == CANNOT_EMBED:
        return APIError(400, "This model cannot create embeddings on the hosts that serve it; use an embedding "
                        "model (GET /api/andy/v1/models lists them).", code=CANNOT_EMBED, param="model")
    if 400 <= status < 500 and status not in (408, 429):
        return APIError(status, f"The model's backend rejected this request (HTTP {status}) on every host "
                        "tried; check the request's parameters.", code="backend_rejected")
    return APIError(502, f"The model's backend failed (HTTP {status}) on the hosts tried; retry shortly.",
                    type="server_error", code="backend_error")


def timeout_error(message: str) -> APIError:
    return APIError(504, message, type="server_error", code="timeout")
