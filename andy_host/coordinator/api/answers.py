"""Running a client's work on the pool and handing the answer back, whole or streamed,
for every API the coordinator speaks (OpenAI's and Ollama's).

Streamed, the response's headers go out with the first content, so a failure before it
is still answered with a proper HTTP status; a failure after it ends the stream with
the API's explicit error event, never a truncated success.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from andy_host.coordinator.access.auth import check_model
from andy_host.coordinator.access.keyscope import allows
from andy_host.coordinator.api.sse import StreamWriter
from andy_host.coordinator.hosts.registry import REGISTRY
from andy_host.coordinator.observe.metrics import METRICS, Metrics
from andy_host.coordinator.pool.capacity import serving
from andy_host.coordinator.pool.relay import RELAY, Restart
from andy_host.coordinator.pool.scheduler import supports
from andy_host.coordinator.pool.work import NEED_WORDS, Work, feature_needs
from andy_host.coordinator.replication.federation import FEDERATION
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.context import context
from andy_host.errors import APIError, bad_request, model_not_found
from andy_host.protocol import Chunk, Done, JobKind, TokenLogprob

log = structlog.get_logger("andy_host.api")

Items = AsyncGenerator[Chunk | Done | Restart, None]


def resolve_model(request: web.Request, requested: str, kind: JobKind = "chat") -> str:
    """The served model meant by ``requested``; "" (``auto``, or none) lets the pool
    choose one for ``kind``."""
    if not requested:
        requested = pool_choice(request, kind)
    model = request.app[REGISTRY].resolve(requested)
    if model is None:
        raise model_not_found(requested)
    check_model(request, model)  # 403 for a key scoped to other models
    context(request).model = model
    return model


def pool_choice(request: web.Request, kind: JobKind) -> str:
    """What ``auto`` means: the configured default for the kind, else the model (one the
    request's key may use) whose serving hosts have the most free slots now; ties go to
    the model with more hosts, then by name. For embeddings, a dedicated embedding model
    (one no host chats with) comes before a chat model that also embeds. Before all
    that, an established model (``Registry.established``: a trusted host or one that
    passed answer checks serves it) comes before one only strangers serve, so a host
    that makes up a model and claims many slots does not draw all ``auto`` traffic; a
    quarantined host counts for nothing."""
    config = request.app[CONFIG]
    default = config.default_embedding_model if kind == "embed" else config.default_model
    if default:
        return default
    registry = request.app[REGISTRY]
    now, best, established = time.monotonic(), None, registry.established()
    for name, hosts in registry.by_model.items():
        able = [h for h in hosts if h.trust.quarantined is None  # a quarantined host gets checks only
                and (h.models[name].embed if kind == "embed" else h.models[name].chat)]
        if not able or not allows(context(request).key_scope, name):
            continue
        free = sum(max(0, h.free) for h in able if serving(h, now))
        chats = kind == "embed" and any(h.models[name].chat for h in hosts if h.trust.quarantined is None)
        rank = (name not in established, chats, -free, -len(able), name)
        if best is None or rank < best[0]:
            best = (rank, name)
    if best is None:
        what = "an embedding model" if kind == "embed" else "a chat model"
        raise APIError(503, f"No host serves {what} right now, so `auto` has nothing to choose; retry shortly.",
                       type="server_error", code="no_available_hosts", headers={"Retry-After": "5"})
    return best[1]


def check_supported(request: web.Request, work: Work) -> None:
    """400 naming the parameter when hosts serve the model but none can honour it (when
    none is connected at all, the relay's 503 says so; when the prompt cannot fit on any,
    the scheduler's 400 ``context_length_exceeded``)."""
    hosts = request.app[REGISTRY].by_model.get(work.model, set())
    needs = feature_needs(work.needs)
    if not hosts or not needs or any(supports(h, work.model, needs) for h in hosts):
        return
    for need in sorted(needs):
        if not any(supports(h, work.model, frozenset({need})) for h in hosts):
            param, what = NEED_WORDS.get(need, (need, need))
            raise bad_request(f"No host serving `{work.model}` supports {what}; `{param}` cannot be honoured.",
                              param=param, code="unsupported_parameter")
    raise bad_request(f"No single host serving `{work.model}` supports all the features this request asks for.",
                      code="unsupported_parameter")


def submit(request: web.Request, work: Work, stream: bool) -> Items:
    """The work on the pool: its items (chunks, then Done); in replicated mode on any
    replica's hosts."""
    federation = request.app.get(FEDERATION)
    run = request.app[RELAY].run if federation is None else federation.run
    ctx = context(request)
    return run(work, ctx.client, stream=stream, on_stall=lambda: _drop_client(request, work.model),
               trusted_only=ctx.trusted_only, trace=ctx.request_id or None)


def _drop_client(request: web.Request, model: str) -> None:
    """The client stopped reading while its answer kept coming: end its connection (its
    pending write fails, the request ends, and the job is cancelled on the host)."""
    log.warning("client.not_reading", model=model, path=request.path)
    if request.transport is not None:
        request.transport.close()


class Seen:
    """Records time to first token and tokens generated from the relay's items."""

    __slots__ = ("first", "metrics", "model", "started")

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics, self.model, self.started, self.first = metrics, model, time.monotonic(), True

    def __call__(self, item: Chunk | Done | Restart) -> None:
        if self.first and isinstance(item, Chunk):
            self.metrics.observe_ttft(self.model, time.monotonic() - self.started)
            self.first = False
        elif isinstance(item, Done):
            self.metrics.observe_tokens(self.model, item.usage.get("completion_tokens", 0))
            self.metrics.observe_prompt_tokens(self.model, item.usage.get("prompt_tokens", 0))


@dataclass(slots=True)
class Whole:
    """A whole answer: its text, log probabilities and end."""

    done: Done
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def whole(request: web.Request, work: Work) -> Whole:
    """The answer, whole (a failed host's partial answer discarded on a restart)."""
    seen = Seen(request.app[METRICS], work.model)
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    async with aclosing(submit(request, work, stream=False)) as items:
        async for item in items:
            seen(item)
            if isinstance(item, Chunk):
                parts.append(item.content)
                logprobs.extend(item.logprobs or ())
            elif isinstance(item, Restart):
                parts.clear()
                logprobs.clear()
            else:
                logprobs.extend(item.logprobs or ())
                return Whole(item, parts, logprobs)
    raise AssertionError("the relay ends with Done or raises")


async def streamed(request: web.Request, work: Work, writer: StreamWriter) -> web.StreamResponse:
    """The answer as it comes, written by ``writer``."""
    seen = Seen(request.app[METRICS], work.model)
    response: web.StreamResponse | None = None
    async with aclosing(submit(request, work, stream=True)) as items:
        try:
            async for item in items:
                seen(item)
                if response is None:
                    response = web.StreamResponse(headers=writer.headers)
                    await response.prepare(request)
                    await response.write(writer.start())
                if isinstance(item, Chunk):
                    await response.write(writer.chunk(item))
                elif isinstance(item, Done):
                    await response.write(writer.end(item))
        except APIError as error:  # StreamBroken included
            if response is None:
                raise
            log.warning("stream.error_event", model=work.model, message=error.message)
            context(request).pool_failed = error.status >= 500
            await response.write(writer.error(error))
    assert response is not None
    await response.write_eof()
    return response
