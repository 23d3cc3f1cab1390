"""The OpenAI-compatible HTTP API: chat completions (with SSE), embeddings, models."""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from contextlib import aclosing

import structlog
from aiohttp import web

from andy_host.coordinator import bodies
from andy_host.coordinator.auth import CLIENT, TRUSTED_ONLY
from andy_host.coordinator.httputil import json_response, read_json
from andy_host.coordinator.limits import MODEL, POOL_FAILED, add_permit_headers, limited
from andy_host.coordinator.metrics import Metrics
from andy_host.coordinator.poolstatus import pool_status
from andy_host.coordinator.relay import Restart
from andy_host.coordinator.sse import SSE_HEADERS, ChunkWriter
from andy_host.coordinator.state import CONFIG, METRICS, REGISTRY, RELAY
from andy_host.errors import APIError, bad_request, model_not_found
from andy_host.protocol import Done

log = structlog.get_logger("andy_host.api")


def resolve_model(request: web.Request, requested: str) -> str:
    model = request.app[REGISTRY].resolve(requested)
    if model is None:
        raise model_not_found(requested)
    request[MODEL] = model
    return model


def _usage(done: Done) -> dict[str, int]:
    prompt = done.usage.get("prompt_tokens", 0)
    completion = done.usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@limited("chat")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    requested = bodies.parse_model(body)
    chat = bodies.parse_chat(body, request.app[CONFIG].max_content_chars)
    stream, include_usage = bodies.parse_stream(body)
    chat["stream"] = stream  # the host asks its backend for the answer the same way
    model = resolve_model(request, requested)
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    jobs = request.app[RELAY].run("chat", model, chat, request.get(CLIENT, ""), stream=stream,
                                  on_stall=lambda: _drop_client(request, model),
                                  trusted_only=request.get(TRUSTED_ONLY, False))
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
    writer = ChunkWriter(completion_id, model, include_usage)
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
        except APIError as error:  # StreamBroken included
            if response is None:
                raise
            log.warning("stream.error_event", model=model, message=error.message)
            request[POOL_FAILED] = error.status >= 500
            await response.write(f"data: {json.dumps(error.body())}\n\n".encode())
    assert response is not None
    await response.write_eof()
    return response


def _drop_client(request: web.Request, model: str) -> None:
    """The client stopped reading while its answer kept coming: end its connection (its
    pending write fails, the request ends, and the job is cancelled on the host)."""
    log.warning("client.not_reading", model=model, path=request.path)
    if request.transport is not None:
        request.transport.close()


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
    requested = bodies.parse_model(body)
    inputs, encoding = bodies.parse_embed(body)
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
    jobs = request.app[RELAY].run("embed", model, {"input": inputs}, request.get(CLIENT, ""), stream=False,
                                  trusted_only=request.get(TRUSTED_ONLY, False))
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


def add_routes(app: web.Application) -> None:
    for prefix in ("/api/andy/v1", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_get("/api/andy/models", andy_models)
    app.router.add_get("/api/andy/pool_status", pool_status)
    app.on_response_prepare.append(add_permit_headers)
