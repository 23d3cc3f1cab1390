"""The OpenAI-compatible HTTP API: chat completions (with SSE), embeddings, models."""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import orjson
import structlog
from aiohttp import web

from andy_host.coordinator.auth import CLIENT
from andy_host.coordinator.metrics import Metrics
from andy_host.coordinator.relay import Restart, StreamBroken
from andy_host.coordinator.state import ACCESS, CONFIG, METRICS, REGISTRY, RELAY, SCHEDULER, STATS
from andy_host.errors import APIError, bad_request, error_body, model_not_found
from andy_host.protocol import Done

from . import requests as parse

log = structlog.get_logger("andy_host.api")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PERMIT_HEADERS = "andy_ratelimit_headers"
POOL_FAILED = "andy_pool_failed"
MODEL = "andy_model"  # request key: the resolved model, for metrics


def limited(endpoint: str) -> Callable[[Handler], Handler]:
    """Admit (401/429) before the handler runs; refund when the pool failed the request."""

    def wrap(handler: Handler) -> Handler:
        async def limited_handler(request: web.Request) -> web.StreamResponse:
            access, metrics = request.app[ACCESS], request.app[METRICS]
            started = time.monotonic()
            status = 500
            try:
                permit = access.admit(request, endpoint)
                request[PERMIT_HEADERS] = permit.headers
                try:
                    response = await handler(request)
                except APIError as exc:
                    if exc.status >= 500:
                        access.refund(permit)
                    exc.headers = {**permit.headers, **exc.headers}
                    raise
                status = response.status
                if status >= 500 or request.get(POOL_FAILED):
                    access.refund(permit)
                    status = 502 if status < 500 else status  # a stream that ended in an error event
                return response
            except APIError as exc:
                status = exc.status
                raise
            finally:
                metrics.observe(endpoint, request.get(MODEL, ""), status, time.monotonic() - started)

        return limited_handler

    return wrap


async def add_permit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: rate-limit headers on every answer of a limited endpoint."""
    for name, value in request.get(PERMIT_HEADERS, {}).items():
        response.headers.setdefault(name, value)


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:  # parse again for the standard library's clearer message
        body = _loads_slowly(raw)
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _loads_slowly(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("The request body is not valid UTF-8.") from None
    except ValueError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None


def resolve_model(request: web.Request, requested: str) -> str:
    model = request.app[REGISTRY].resolve(requested)
    if model is None:
        raise model_not_found(requested)
    request[MODEL] = model
    return model


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Like ``web.json_response``, with the body encoded once, as bytes, by orjson."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")


def _usage(done: Done) -> dict[str, int]:
    prompt = done.usage.get("prompt_tokens", 0)
    completion = done.usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _ChunkWriter:
    """Builds ``chat.completion.chunk`` SSE events; the id/model prefix is made once."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        created = int(time.time())
        self.head = (
            '{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
            '"system_fingerprint":null,"choices":'
        ) % (completion_id, created, json.dumps(model))
        self.tail = ',"usage":null}\n\n' if include_usage else "}\n\n"

    def delta(self, delta: str, finish_reason: str | None = None) -> bytes:
        reason = "null" if finish_reason is None else f'"{finish_reason}"'
        return (
            f'data: {self.head}[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{reason}}}]'
            f"{self.tail}"
        ).encode()

    def content(self, text: str) -> bytes:
        return self.delta('{"content":%s}' % orjson.dumps(text).decode())

    def usage(self, usage: dict[str, int]) -> bytes:
        return f'data: {self.head}[],"usage":{json.dumps(usage)}}}\n\n'.encode()


@limited("chat")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    requested = parse.parse_model(body)
    chat = parse.parse_chat(body, request.app[CONFIG].max_content_chars)
    stream, include_usage = parse.parse_stream(body)
    chat["stream"] = stream  # the host asks its backend for the answer the same way
    model = resolve_model(request, requested)
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    jobs = request.app[RELAY].run("chat", model, chat, request.get(CLIENT, ""), stream=stream)
    seen = _Seen(request.app[METRICS], model)
    if not stream:
        parts: list[str] = []
        done: Done | None = None
        async with aclosing(jobs):
            async for item in jobs:
                seen(item)
                if isinstance(item, str):
                    parts.append(item)
                elif isinstance(item, Restart):
                    parts.clear()
                else:
                    done = item
        assert done is not None  # run_job ends with Done or raises
        return json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(parts)},
                        "logprobs": None,
                        "finish_reason": done.finish_reason,
                    }
                ],
                "usage": _usage(done),
            }
        )
    writer = _ChunkWriter(completion_id, model, include_usage)
    response: web.StreamResponse | None = None
    async with aclosing(jobs):
        try:
            async for item in jobs:
                seen(item)
                if response is None:
                    # Headers go out with the first content, so that failures before it
                    # can still be answered with a proper HTTP status.
                    response = web.StreamResponse(headers=SSE_HEADERS)
                    await response.prepare(request)
                    await response.write(writer.delta('{"role":"assistant","content":""}'))
                if isinstance(item, str):
                    await response.write(writer.content(item))
                elif isinstance(item, Done):
                    await response.write(writer.delta("{}", item.finish_reason))
                    if include_usage:
                        await response.write(writer.usage(_usage(item)))
                    await response.write(b"data: [DONE]\n\n")
        except (APIError, StreamBroken) as exc:
            if response is None:
                raise
            error = exc if isinstance(exc, APIError) else APIError(
                502, str(exc), type="server_error", code="stream_interrupted"
            )
            log.warning("stream.error_event", model=model, message=error.message)
            request[POOL_FAILED] = error.status >= 500
            await response.write(f"data: {json.dumps(error.body())}\n\n".encode())
    assert response is not None
    await response.write_eof()
    return response


class _Seen:
    """Records time to first token and tokens generated from the relay's items."""

    __slots__ = ("first", "metrics", "model", "started")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics, self.model, self.started, self.first = metrics, model, time.monotonic(), True

    def __call__(self, item: str | Done | Restart) -> None:
        if self.first and isinstance(item, str):
            self.metrics.observe_ttft(self.model, time.monotonic() - self.started)
            self.first = False
        elif isinstance(item, Done):
            self.metrics.observe_tokens(self.model, item.usage.get("completion_tokens", 0))


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@limited("embeddings")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    requested = parse.parse_model(body)
    inputs, encoding = parse.parse_embed(body)
    model = resolve_model(request, requested)
    registry = request.app[REGISTRY]
    hosts = registry.by_model.get(model, set())
    if hosts and not any(h.models[model].embed for h in hosts):
        raise bad_request(
            f"The model `{model}` cannot create embeddings on any host of this pool; "
            "use an embedding model (GET /api/andy/v1/models lists them).",
            param="model",
            code="model_cannot_embed",
        )
    done: Done | None = None
    jobs = request.app[RELAY].run("embed", model, {"input": inputs}, request.get(CLIENT, ""), stream=False)
    async with aclosing(jobs):
        async for item in jobs:
            if isinstance(item, Done):
                done = item
    if done is None or done.embeddings is None or len(done.embeddings) != len(inputs):
        raise APIError(502, "The host returned no embeddings for this input.", type="server_error")
    prompt_tokens = done.usage.get("prompt_tokens", 0)
    return json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode_vector(vec, encoding)}
                for i, vec in enumerate(done.embeddings)
            ],
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


@limited("models")
async def list_models(request: web.Request) -> web.Response:
    names = request.app[REGISTRY].served_models()
    return json_response(
        {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "andy-host"} for n in names],
        }
    )


async def andy_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return json_response(
        {"models": [{"name": n, "hosts": len(registry.by_model[n])} for n in registry.served_models()]}
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes an OpenAI-shaped error; never a traceback to the client."""
    try:
        return await handler(request)
    except APIError as exc:
        return json_response(exc.body(), status=exc.status, headers=exc.headers)
    except ValueError as exc:  # e.g. a header aiohttp could not parse
        return json_response(error_body(f"Bad request: {exc}", type="invalid_request_error"), status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"Unknown path {request.path}. The API lives under /api/andy/v1/.",
            405: f"Method {request.method} is not allowed on {request.path}.",
            413: "The request body is too large.",
        }.get(exc.status, exc.reason)
        return json_response(
            error_body(message, type="invalid_request_error", code=exc.reason.lower().replace(" ", "_")),
            status=exc.status,
        )
    except (ConnectionResetError, TimeoutError) as exc:
        log.info("request.client_gone", path=request.path, error=str(exc))
        raise
    except Exception:
        log.exception("request.internal_error", path=request.path)
        return json_response(
            error_body("Internal error in the coordinator; it has been logged.", type="server_error"),
            status=500,
        )


@limited("pool_status")
async def pool_status(request: web.Request) -> web.Response:
    """Totals, hosts and models; host names only, never addresses or tokens."""
    registry, scheduler = request.app[REGISTRY], request.app[SCHEDULER]
    now = time.time()
    hosts = list(registry.hosts.values())
    in_flight = sum(len(h.jobs) for h in hosts)
    return json_response(
        {
            "total_hosts": len(hosts),
            "active_hosts": sum(1 for h in hosts if h.status == "active"),
            "total_models": len(registry.by_model),
            "in_flight": in_flight,
            "queued": scheduler.queued(),
            "tokens_per_second": round(sum((h.health.tps or 0.0) * len(h.jobs) for h in hosts), 1),
            "stats": request.app[STATS].as_dict(),
            "hosts": [
                {
                    "id": h.id,
                    "name": h.name,
                    "status": "busy" if h.status == "active" and h.free <= 0 else h.status,
                    "reason": h.reason,
                    "backend": h.backend,
                    "models": sorted(h.models),
                    "loaded": sorted(h.loaded),
                    "load": len(h.jobs),
                    "capacity": h.capacity,
                    "tokens_per_second": h.health.tps,
                    "time_to_first_token": h.health.ttft,
                    "uptime": round(now - h.connected_at, 1),
                    "served": h.served,
                    "tokens": h.tokens,
                    "failures": h.failures,
                }
                for h in hosts
            ],
            "models": [
                {
                    "name": name,
                    "hosts": len(members),
                    "capacity": sum(h.capacity for h in members),
                    "queue": scheduler.queued(name),
                }
                for name, members in sorted(registry.by_model.items())
            ],
        }
    )


def add_routes(app: web.Application) -> None:
    for prefix in ("/api/andy/v1", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_get("/api/andy/models", andy_models)
    app.router.add_get("/api/andy/pool_status", pool_status)
    app.on_response_prepare.append(add_permit_headers)
