"""HTTP plumbing shared by every endpoint: reading JSON bodies, writing JSON answers,
and the middleware that turns every failure into an OpenAI-shaped error."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.errors import APIError, bad_request

log = structlog.get_logger("andy_host.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, read within ``body_timeout``; 400 for anything else."""
    limit = request.app[CONFIG].body_timeout
    try:
        async with asyncio.timeout(limit):
            raw = await request.read()
    except TimeoutError:
        raise APIError(408, f"The request body did not arrive within {limit:.0f}s.", code="request_timeout") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(_why_not_json(raw, exc)) from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _why_not_json(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """A message a person can act on (orjson is strict: it also refuses lone surrogates
    and nesting over 1024 levels, which the standard library would let through)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "The request body is not valid UTF-8."
    if len(raw) <= 65536:
        try:
            json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_finite)
        except RecursionError:
            return "The request body is nested too deeply."
        except ValueError as detail:
            return f"The request body is not valid JSON: {detail}"
        else:
            return "The request body holds invalid Unicode (an unpaired surrogate) or is nested too deeply."
    return f"The request body is not valid JSON: {exc}"


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _finite(text: str) -> float:
    """A number orjson could read: one that is finite as a double (it refuses the others)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Like ``web.json_response``, with the body encoded once, as bytes, by orjson (the
    standard library's ASCII-escaped encoding when orjson refuses a value)."""
    try:
        body = orjson.dumps(data)
    except TypeError:
        body = json.dumps(data, ensure_ascii=True).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json", charset="utf-8")


def ollama_path(path: str) -> bool:
    """A path of the Ollama API, whose errors are ``{"error": "..."}``."""
    return path.startswith("/api/") and not path.startswith(("/api/andy/", "/api/v1/"))


def error_response(request: web.Request, error: APIError) -> web.Response:
    """An error in the shape the path's clients read: Ollama's or OpenAI's."""
    body = {"error": error.message} if ollama_path(request.path) else error.body()
    return json_response(body, status=error.status, headers=error.headers)


def unknown_path(path: str) -> str:
    """A 404 message that is right about where the API lives."""
    prefix = next((p for p in ("/api/andy/v1", "/api/v1", "/v1") if path.startswith(p + "/")), None)
    if prefix is not None:
        return (f"There is no endpoint {path}. Under {prefix}/ this pool serves chat/completions, completions, "
                "responses, embeddings, models and models/{model}; /openapi.json lists every endpoint.")
    if ollama_path(path):
        return (f"There is no endpoint {path}. The Ollama API here serves /api/chat, /api/generate, /api/embed, "
                "/api/embeddings, /api/tags, /api/ps, /api/show and /api/version.")
    return (f"Unknown path {path}. The OpenAI API lives under /api/andy/v1/ (or /api/v1/, /v1/), the Ollama API under "
            "/api/; /openapi.json lists every endpoint.")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an OpenAI-shaped (or Ollama-shaped) error; never a
    traceback to the client."""
    try:
        return await handler(request)
    except APIError as exc:
        return error_response(request, exc)
    except ValueError as exc:  # e.g. a header aiohttp could not parse
        return error_response(request, APIError(400, f"Bad request: {exc}"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: unknown_path(request.path),
            405: f"Method {request.method} is not allowed on {request.path}.",
            413: "The request body is too large.",
        }.get(exc.status, exc.reason)
        kept = {k: v for k, v in exc.headers.items() if k in ("Retry-After", "Allow")}
        return error_response(request, APIError(exc.status, message, code=exc.reason.lower().replace(" ", "_"),
                                                headers=kept))
    except (ConnectionResetError, TimeoutError) as exc:
        log.info("request.client_gone", path=request.path, error=str(exc))
        raise
    except Exception:
        log.exception("request.internal_error", path=request.path)
        return error_response(request, APIError(500, "Internal error in the coordinator; it has been logged.",
                                                type="server_error"))
