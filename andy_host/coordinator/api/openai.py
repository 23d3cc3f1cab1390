"""The OpenAI-compatible HTTP API: chat completions and text completions (whole, with
``n`` choices, or streamed as SSE), embeddings, models."""

from __future__ import annotations

import asyncio
import base64
import secrets
import struct
import time
from contextlib import aclosing
from typing import Any

from aiohttp import web

from andy_host.coordinator.access.auth import check_model, visible_models
from andy_host.coordinator.access.limits import add_permit_headers, limited
from andy_host.coordinator.api import openai_bodies as bodies
from andy_host.coordinator.api.answers import Whole, check_supported, resolve_model, streamed, submit, whole
from andy_host.coordinator.api.sse import (
    ChunkWriter,
    CompletionWriter,
    chat_logprobs,
    completion_logprobs,
    tool_calls_json,
    usage_of,
)
from andy_host.coordinator.hosts.registry import REGISTRY, Registry
from andy_host.coordinator.observe.metrics import METRICS
from andy_host.coordinator.observe.poolstatus import pool_status
from andy_host.coordinator.pool.work import Work, chat_work, completion_work
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.context import context
from andy_host.coordinator.web.json import json_response, read_json
from andy_host.errors import APIError, bad_request, model_not_found
from andy_host.protocol import Done, EmbedRequest


def _total_usage(answers: list[Whole]) -> dict[str, int]:
    usage = usage_of(answers[0].done)
    for other in answers[1:]:
        extra = usage_of(other.done)
        usage["completion_tokens"] += extra["completion_tokens"]
        usage["total_tokens"] += extra["completion_tokens"]
    return usage


async def _choices(request: web.Request, work: Work, n: int) -> list[Whole]:
    """``n`` whole answers, each its own job (so on whichever hosts are best)."""
    return list(await asyncio.gather(*(whole(request, work) for _ in range(n))))


def _chat_choice(index: int, answer: Whole, logprobs: bool) -> dict[str, Any]:
    calls = answer.done.tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": (answer.text or None) if calls else answer.text,
                               "refusal": None}
    if calls:
        message["tool_calls"] = tool_calls_json(calls)
    return {"index": index, "message": message, "finish_reason": answer.done.finish_reason,
            "logprobs": chat_logprobs(answer.logprobs) if logprobs else None}


@limited("chat")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    requested = bodies.parse_model(body)
    config = request.app[CONFIG]
    chat, asked = bodies.parse_chat(body, config.max_content_chars, config.max_choices)
    work = chat_work(resolve_model(request, requested), chat)
    check_supported(request, work)
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    if asked.stream:
        return await streamed(request, work, ChunkWriter(completion_id, work.model, asked.include_usage))
    answers = await _choices(request, work, asked.n)
    return json_response({
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": work.model,
        "system_fingerprint": None,
        "choices": [_chat_choice(i, a, chat.logprobs) for i, a in enumerate(answers)],
        "usage": _total_usage(answers),
    })


@limited("completions")
async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    requested = bodies.parse_model(body)
    config = request.app[CONFIG]
    completion, asked = bodies.parse_completion(body, config.max_content_chars, config.max_choices)
    echo = completion.prompt if body.get("echo") is True else ""
    work = completion_work(resolve_model(request, requested), completion)
    check_supported(request, work)
    completion_id = f"cmpl-{secrets.token_hex(12)}"
    if asked.stream:
        return await streamed(request, work, CompletionWriter(completion_id, work.model, asked.include_usage, echo))
    answers = await _choices(request, work, asked.n)
    choices = [{"index": i, "text": echo + a.text, "finish_reason": a.done.finish_reason,
                "logprobs": completion_logprobs(a.logprobs, len(echo)) if completion.logprobs else None}
               for i, a in enumerate(answers)]
    return json_response({"id": completion_id, "object": "text_completion", "created": int(time.time()),
                          "model": work.model, "system_fingerprint": None, "choices": choices,
                          "usage": _total_usage(answers)})


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embed(request: web.Request, model: str, inputs: list[str]) -> Done:
    """Embeddings of ``inputs`` from the pool (shared with the Ollama API)."""
    hosts = request.app[REGISTRY].by_model.get(model, set())
    if hosts and not any(h.models[model].embed for h in hosts):
        raise bad_request(
            f"The model `{model}` cannot create embeddings on any host of this pool; "
            "use an embedding model (GET /api/andy/v1/models lists them).",
            param="model", code="model_cannot_embed",
        )
    done: Done | None = None
    async with aclosing(submit(request, Work("embed", model, EmbedRequest(input=inputs)), stream=False)) as items:
        async for item in items:
            if isinstance(item, Done):
                done = item
    if done is None or done.embeddings is None or len(done.embeddings) != len(inputs):
        raise APIError(502, "The host returned no embeddings for this input.", type="server_error")
    request.app[METRICS].observe_prompt_tokens(model, done.usage.get("prompt_tokens", 0))
    return done


@limited("embeddings")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    requested = bodies.parse_model(body)
    inputs, encoding = bodies.parse_embed(body)
    done = await embed(request, resolve_model(request, requested, "embed"), inputs)
    assert done.embeddings is not None
    prompt_tokens = done.usage.get("prompt_tokens", 0)
    return json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode_vector(vec, encoding)}
                 for i, vec in enumerate(done.embeddings)],
        "model": context(request).model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })


def _model_object(name: str, registry: Registry) -> dict[str, Any]:
    """A model as OpenAI lists it; with ``max_model_len`` (vLLM's name, which LiteLLM and
    other OpenAI-compatible clients read) when a host says what it serves: the most
    tokens one request (prompt and answer) may hold, on the host that serves the most."""
    found: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "andy-host"}
    context = registry.served_context(name)
    if context:
        found["max_model_len"] = context
    return found


@limited("models")
async def list_models(request: web.Request) -> web.Response:
    names = visible_models(request, request.app[REGISTRY].pool_models())
    return json_response({"object": "list", "data": [_model_object(n, request.app[REGISTRY]) for n in names]})


@limited("models")
async def get_model(request: web.Request) -> web.Response:
    requested = request.match_info["model"]
    model = request.app[REGISTRY].resolve(requested)
    if model is None:
        raise model_not_found(requested)
    check_model(request, model)
    return json_response(_model_object(model, request.app[REGISTRY]))


async def andy_models(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return json_response(
        {"models": [{"name": n, "hosts": len(registry.by_model[n]), "max_model_len": registry.served_context(n)}
                    for n in registry.served_models()]}
    )


API_PREFIXES = ("/api/andy/v1", "/api/v1", "/v1")  # the pool's own, Mindcraft-CE's Andy class, OpenAI's


def add_routes(app: web.Application) -> None:
    for prefix in API_PREFIXES:
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_get(f"{prefix}/models/{{model:.+}}", get_model)
    app.router.add_get("/api/andy/models", andy_models)
    app.router.add_get("/api/andy/pool_status", pool_status)
    app.on_response_prepare.append(add_permit_headers)
