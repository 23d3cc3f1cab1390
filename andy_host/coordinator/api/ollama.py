"""The Ollama API on the coordinator: to Ollama clients (Open WebUI, LangChain's
ChatOllama, Mindcraft's Ollama profile, the ``ollama`` package) the pool looks like one
large Ollama server.

``/api/chat`` and ``/api/generate`` stream NDJSON unless ``stream: false``; the last
object says ``done: true`` with ``done_reason`` and durations in nanoseconds (measured
here: time to first token as ``prompt_eval_duration``, the rest as ``eval_duration``; a
whole answer's time is all ``eval_duration``),
and a failure after content ends the stream with an ``{"error": ...}`` line. They run
with the same routing, failover, limits and keys as the OpenAI API: free within the
anonymous limit, like chat completions. ``/api/tags``, ``/api/ps`` and ``/api/show``
answer like ``/v1/models`` (a key when ``require_keys``), ``/api/embed`` like
``/v1/embeddings``. A model's details are those most of its hosts report; its context
length (``/api/show``'s ``model_info["<family>.context_length"]`` and ``num_ctx`` in
``parameters``, ``/api/ps``'s ``context_length``) is the largest context a connected
host serves per request (a prompt up to it can be routed there), else, when no host
says, the trained context most of them report. Errors are
Ollama's ``{"error": "..."}`` with the HTTP status.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from andy_host.coordinator.access.auth import visible_models
from andy_host.coordinator.access.limits import limited
from andy_host.coordinator.api import ollama_bodies
from andy_host.coordinator.api import openai_bodies as bodies
from andy_host.coordinator.api.answers import check_supported, resolve_model, streamed, whole
from andy_host.coordinator.api.openai import embed
from andy_host.coordinator.hosts.registry import REGISTRY
from andy_host.coordinator.pool.work import Work, chat_work, completion_work
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.json import json_response, read_json
from andy_host.errors import APIError
from andy_host.protocol import ChatRequest, Chunk, Done, JobKind, ModelInfo, TokenLogprob

OLLAMA_VERSION = "0.12.11"  # the Ollama API version whose shapes this pool speaks
NDJSON = {"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _logprobs(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [{"token": e.token, "logprob": e.logprob,
             "top_logprobs": [{"token": t, "logprob": lp} for t, lp in e.top]} for e in entries]


def _calls(done: Done) -> list[dict[str, Any]]:
    out = []
    for index, call in enumerate(done.tool_calls):
        try:
            arguments = orjson.loads(call.arguments)
        except orjson.JSONDecodeError:
            arguments = {}
        out.append({"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}})
    return out


class Timing:
    """The durations Ollama reports, measured by the coordinator (nanoseconds)."""

    def __init__(self) -> None:
        self.started = time.monotonic_ns()
        self.first: int | None = None

    def seen(self) -> None:
        if self.first is None:
            self.first = time.monotonic_ns()

    def stats(self, done: Done) -> dict[str, Any]:
        end = time.monotonic_ns()
        first = self.first or self.started  # a whole answer: its time is all generation
        return {"done": True, "done_reason": done.finish_reason if done.finish_reason != "tool_calls" else "stop",
                "total_duration": end - self.started, "load_duration": 0,
                "prompt_eval_count": done.usage.get("prompt_tokens", 0), "prompt_eval_duration": first - self.started,
                "eval_count": done.usage.get("completion_tokens", 0), "eval_duration": end - first}


class OllamaWriter:
    """NDJSON lines of ``/api/chat`` (``message``) or ``/api/generate`` (``response``)."""

    headers = NDJSON

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat, self.timing = model, chat, Timing()

    def line(self, text: str, logprobs: list[TokenLogprob] | None = None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["response"] = text
        if logprobs:
            body["logprobs"] = _logprobs(logprobs)
        return {**body, "done": False, **extra}

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: Chunk) -> bytes:
        self.timing.seen()
        return orjson.dumps(self.line(chunk.content, chunk.logprobs)) + b"\n"

    def end(self, done: Done) -> bytes:
        out = b""
        if done.tool_calls:
            calls = self.line("")
            calls["message" if self.chat else "response"] = (
                {"role": "assistant", "content": "", "tool_calls": _calls(done)} if self.chat else "")
            out += orjson.dumps(calls) + b"\n"
        return out + orjson.dumps(self.line("", done.logprobs, **self.timing.stats(done))) + b"\n"

    def error(self, error: APIError) -> bytes:
        return orjson.dumps({"error": error.message}) + b"\n"


async def _answer(request: web.Request, work: Work, chat: bool) -> web.StreamResponse:
    check_supported(request, work)
    writer = OllamaWriter(work.model, chat)
    if work.stream:
        return await streamed(request, work, writer)
    answer = await whole(request, work)
    body = writer.line(answer.text, answer.logprobs, **writer.timing.stats(answer.done))
    if chat and answer.done.tool_calls:
        body["message"]["tool_calls"] = _calls(answer.done)
    return json_response(body)


def _model(request: web.Request, body: dict[str, Any], kind: JobKind = "chat") -> str:
    requested = bodies.parse_model({"model": body.get("model") or body.get("name")})  # "": auto
    try:
        return resolve_model(request, requested, kind)
    except APIError as exc:
        if exc.status != 404:  # a key scoped to other models: its 403
            raise
        raise APIError(404, f"model '{requested}' not found", code="model_not_found") from None


@limited("ollama_chat")
async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    model = _model(request, body)
    parsed = ollama_bodies.parse_chat(body, request.app[CONFIG].max_content_chars)
    return await _answer(request, chat_work(model, parsed), chat=True)


@limited("ollama_generate")
async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    model = _model(request, body)
    if not body.get("prompt") and not body.get("system"):  # Ollama's way to load a model: it is
        return json_response({"model": model, "created_at": _now(), "response": "", "done": True,
                              "done_reason": "load"})
    parsed = ollama_bodies.parse_generate(body, request.app[CONFIG].max_content_chars)
    work = chat_work(model, parsed) if isinstance(parsed, ChatRequest) else completion_work(model, parsed)
    return await _answer(request, work, chat=False)


@limited("ollama_embed")
async def embed_api(request: web.Request) -> web.Response:
    body = await read_json(request)
    model = _model(request, body, "embed")
    inputs = ollama_bodies.parse_embed_input(body)
    started = time.monotonic_ns()
    done = await embed(request, model, inputs)
    assert done.embeddings is not None
    if request.path.endswith("/embeddings"):  # the older endpoint: one prompt, one vector
        return json_response({"embedding": done.embeddings[0]})
    return json_response({"model": model, "embeddings": done.embeddings, "load_duration": 0,
                          "total_duration": time.monotonic_ns() - started,
                          "prompt_eval_count": done.usage.get("prompt_tokens", 0)})


# --- models ---------------------------------------------------------------------------


def _info(request: web.Request, name: str) -> ModelInfo:
    """What most of the model's hosts that say anything report about it, field by field
    (one host's claim does not win over the others')."""
    infos = [h.models[name] for h in request.app[REGISTRY].by_model.get(name, set())]

    def vote(field: str) -> Any:
        values = Counter(getattr(i, field) for i in infos if getattr(i, field) is not None)
        return values.most_common(1)[0][0] if values else None

    return ModelInfo(name=name, size=vote("size"), quantization=vote("quantization"), family=vote("family"),
                     context_length=vote("context_length"), embed=any(i.embed for i in infos),
                     tools=any(i.tools for i in infos), served_context=request.app[REGISTRY].served_context(name))


def _context(info: ModelInfo) -> int | None:
    """The context to report: what the hosts serve (the largest: a prompt up to it can be
    routed), else, when no host says, what most of them report the model was trained for."""
    return info.served_context or info.context_length


def _details(info: ModelInfo) -> dict[str, Any]:
    family = info.family or ""
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else None,
            "parameter_size": "", "quantization_level": info.quantization or ""}


def _listing(info: ModelInfo) -> dict[str, Any]:
    digest = hashlib.sha256(info.name.encode()).hexdigest()  # a stable id, not a blob's digest
    return {"name": info.name, "model": info.name, "modified_at": _now(), "size": info.size or 0,
            "digest": digest, "details": _details(info)}


@limited("ollama_models")
async def tags(request: web.Request) -> web.Response:
    names = visible_models(request, request.app[REGISTRY].pool_models())
    return json_response({"models": [_listing(_info(request, n)) for n in names]})


@limited("ollama_models")
async def ps(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    loaded = [n for n in visible_models(request, registry.served_models())
              if any(n in h.loaded for h in registry.by_model[n])]
    models = []
    for name in loaded:
        info = _info(request, name)
        models.append({**_listing(info), "expires_at": "0001-01-01T00:00:00Z", "size_vram": info.size or 0,
                       "context_length": _context(info) or 0})
    return json_response({"models": models})


@limited("ollama_models")
async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    info = _info(request, _model(request, body))
    capabilities = ["completion"] + (["tools"] if info.tools else []) + (["embedding"] if info.embed else [])
    model_info: dict[str, Any] = {"general.architecture": info.family or "unknown"}
    context = _context(info)
    if context:
        model_info[f"{info.family or 'unknown'}.context_length"] = context
    parameters = f"num_ctx {info.served_context}" if info.served_context else ""
    return json_response({"modelfile": "", "parameters": parameters, "template": "", "details": _details(info),
                          "model_info": model_info, "capabilities": capabilities, "modified_at": _now()})


async def version(request: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_VERSION})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed_api)
    app.router.add_post("/api/embeddings", embed_api)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/version", version)
