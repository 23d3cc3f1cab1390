"""llama.cpp's ``llama-server`` through its HTTP API.

``/health`` (200 when ready, 503 while loading), ``/v1/models``, ``/props`` (the chat
template's capabilities: tool calls; the context one request gets, a slot's ``n_ctx``:
the host advertises it as the model's ``served_context``; a prompt over it is answered
400 ``exceed_context_size_error`` with ``n_prompt_tokens`` and ``n_ctx``, which the
host passes on as counts), ``/v1/chat/completions`` and ``/v1/completions``
with SSE, ``/v1/embeddings`` (needs ``--embeddings``). Tools, ``tool_choice``,
``response_format`` (a JSON object or schema, as a grammar) and log probabilities pass
through; tools need the chat template to take them (``--jinja``, the default).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from andy_host import modelnames
from andy_host.agent.backends.base import (
    UNREACHABLE,
    Backend,
    ChatPiece,
    Discovered,
    Embeddings,
    bounded_calls,
    json_object,
    line_batches,
    raise_for_backend,
    token_count,
    token_logprobs,
)
from andy_host.errors import BackendError, BackendUnavailable
from andy_host.protocol import (
    CANNOT_EMBED,
    FEATURE_COMPLETION,
    FEATURE_JSON_SCHEMA,
    FEATURE_LOGPROBS,
    FEATURE_TOOL_CHOICE,
    ChatRequest,
    CompletionRequest,
    Message,
    ModelInfo,
    Sampling,
    ToolCall,
)

SAMPLING = ("temperature", "top_p", "max_tokens", "stop", "seed", "frequency_penalty", "presence_penalty")


class LlamaCppBackend(Backend):
    kind = "llamacpp"

    async def version(self) -> str | None:
        props = await self._props()
        build = props.get("build_info")
        return str(build) if build else None

    async def _props(self) -> dict[str, Any]:
        try:
            props = await self._get_json("/props")
        except BackendError:
            return {}
        return props if isinstance(props, dict) else {}

    async def features(self) -> set[str]:
        return {FEATURE_JSON_SCHEMA, FEATURE_LOGPROBS, FEATURE_COMPLETION, FEATURE_TOOL_CHOICE}

    async def discover(self) -> list[Discovered]:
        body = await self._get_json("/v1/models")
        props = await self._props()
        caps = props.get("chat_template_caps") or {}
        tools = isinstance(caps, dict) and caps.get("supports_tool_calls") is True
        served = slot_context(props)
        found = []
        for item in body.get("data", []) if isinstance(body, dict) else []:
            backend_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(backend_id, str) or not backend_id:
                continue
            meta = item.get("meta") or {}
            name = self.config.model_name or backend_id
            info = ModelInfo(
                name=modelnames.served_name(name),
                size=meta.get("size") if isinstance(meta.get("size"), int) else None,
                context_length=token_count(meta.get("n_ctx_train")),
                loaded=True, embed=self.config.embeddings, tools=tools,
                served_context=served or token_count(meta.get("n_ctx")),
            )
            found.append(Discovered(backend_id=backend_id, info=info))
        return found

    async def loaded(self) -> list[str]:
        return [d.backend_id for d in await self.discover()]

    def chat(self, backend_id: str, request: ChatRequest) -> AsyncIterator[ChatPiece]:
        return self._generate("/v1/chat/completions", chat_body(backend_id, request), request.stream)

    def complete(self, backend_id: str, request: CompletionRequest) -> AsyncIterator[ChatPiece]:
        body = {"model": backend_id, "prompt": request.prompt, **_sampling(request)}
        if request.logprobs:  # the legacy completions API: logprobs is the number of alternatives
            body.pop("top_logprobs", None)
            body["logprobs"] = max(request.top_logprobs or 0, 1)
        return self._generate("/v1/completions", body, request.stream)

    async def _generate(self, path: str, body: dict[str, Any], stream: bool) -> AsyncIterator[ChatPiece]:
        if not stream:
            yield _whole(await self._post_json(path, body))
            return
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        calls = _Calls()
        finished = False
        try:
            async with self._post(path, body, self.timeout) as resp:
                await raise_for_backend(resp)
                async for lines in line_batches(resp.content):
                    piece = ChatPiece(pieces=0)
                    texts: list[str] = []
                    for event in _events(lines):
                        _add_event(event, piece, texts, calls)
                    finished = finished or piece.finish_reason is not None
                    piece.content = "".join(texts)
                    if piece.finish_reason:
                        piece.tool_calls = calls.whole()
                    if piece.content or piece.finish_reason or piece.usage or piece.logprobs:
                        yield piece
        except UNREACHABLE as exc:
            raise BackendUnavailable(f"llama-server stream failed: {exc!r}") from None
        if not finished:
            raise BackendError(502, "llama-server ended the stream without a finish_reason")

    async def embed(self, backend_id: str, inputs: list[str]) -> Embeddings:
        try:
            body = await self._post_json("/v1/embeddings", {"model": backend_id, "input": inputs})
        except BackendError as exc:
            if exc.status in (501, 404) or ("embedding" in exc.message.lower() and exc.status < 500):
                raise BackendError(400, f"this model cannot create embeddings here: {exc.message}",
                                   code=CANNOT_EMBED) from None
            raise
        data = sorted(body.get("data", []), key=lambda d: d.get("index", 0))
        vectors = [d["embedding"] for d in data]
        usage = body.get("usage") or {}
        return Embeddings(vectors=vectors, prompt_tokens=int(usage.get("prompt_tokens", 0)))


# --- requests, in OpenAI's shape ---------------------------------------------------------


def _sampling(request: Sampling) -> dict[str, Any]:
    body = {k: getattr(request, k) for k in SAMPLING if getattr(request, k) not in (None, [])}
    if request.logprobs:
        body["logprobs"] = True
        if request.top_logprobs:
            body["top_logprobs"] = request.top_logprobs
    if request.response_format == "json_schema" and request.json_schema is not None:
        schema = {"name": "answer", "schema": request.json_schema}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif request.response_format == "json_object":
        body["response_format"] = {"type": "json_object"}
    return body


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name and message.role == "tool":
        out["name"] = message.name
    return out


def chat_body(backend_id: str, request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": backend_id, "messages": [_message(m) for m in request.messages],
                            **_sampling(request)}
    tools = request.tools
    choice = request.tool_choice
    if choice == "function":  # one named function: that tool alone, required
        tools, choice = [t for t in tools if t.name == request.tool_name], "required"
    if tools and choice != "none":
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in tools
        ]
        if choice:
            body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


# --- answers --------------------------------------------------------------------------


def _events(lines: list[bytes]) -> list[dict[str, Any]]:
    """The SSE events of some lines (``[DONE]`` and comments skipped); an error event raises."""
    events = []
    for line in lines:
        line = line.strip()
        if line.startswith(b"error:"):
            raise BackendError(500, line[6:].decode(errors="replace").strip())
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        event = json_object(payload, "llama-server")
        if "error" in event:
            err = event["error"]
            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            status = int(err.get("code", 500)) if isinstance(err, dict) else 500
            raise BackendError(status, message)
        events.append(event)
    return events


class _Calls:
    """Tool calls as they stream: a name, then arguments in pieces, by index."""

    def __init__(self) -> None:
        self.calls: dict[int, ToolCall] = {}

    def add(self, deltas: Any) -> None:
        for delta in deltas if isinstance(deltas, list) else []:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", len(self.calls))
            function = delta.get("function") or {}
            call = self.calls.get(index)
            if call is None:
                call = self.calls[index] = ToolCall(id=delta.get("id") or _call_id(), name="", arguments="")
            call.name += function.get("name") or ""
            call.arguments += function.get("arguments") or ""

    def whole(self) -> list[ToolCall]:
        calls = [self.calls[i] for i in sorted(self.calls)]
        for call in calls:
            call.arguments = call.arguments or "{}"
        return bounded_calls(calls)


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _add_event(event: dict[str, Any], piece: ChatPiece, texts: list[str], calls: _Calls) -> None:
    choices = event.get("choices") or []
    if choices:
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") if "delta" in choice else choice.get("text")
        if text:
            texts.append(text)
            piece.pieces += 1
        calls.add(delta.get("tool_calls"))
        if choice.get("logprobs"):
            piece.logprobs = (piece.logprobs or []) + token_logprobs(choice["logprobs"].get("content"))
        if choice.get("finish_reason"):
            piece.finish_reason = _finish_reason(choice["finish_reason"])
    usage = event.get("usage")
    if isinstance(usage, dict):
        piece.usage = {"prompt_tokens": int(usage.get("prompt_tokens", 0)),
                       "completion_tokens": int(usage.get("completion_tokens", 0))}


def _whole(answer: Any) -> ChatPiece:
    """A non-streamed answer (chat or completion), in one piece."""
    try:
        choice = answer["choices"][0]
        message = choice.get("message")
        content = (message.get("content") if message is not None else choice.get("text")) or ""
        calls = _Calls()
        if message is not None:
            calls.add([{"index": i, **c} for i, c in enumerate(message.get("tool_calls") or [])])
        usage = answer.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise BackendError(502, f"llama-server's answer has no message: {str(answer)[:80]}") from None
    logprobs = choice.get("logprobs")
    return ChatPiece(
        content=content if isinstance(content, str) else str(content),
        finish_reason=_finish_reason(choice.get("finish_reason")),
        usage={"prompt_tokens": prompt, "completion_tokens": completion},
        pieces=max(completion, 1), tool_calls=calls.whole(),
        logprobs=token_logprobs(logprobs.get("content")) if isinstance(logprobs, dict) else None,
    )


def slot_context(props: dict[str, Any]) -> int | None:
    """The context one request gets: ``/props`` ``default_generation_settings.n_ctx``,
    a slot's (llama-server splits ``-c`` across its ``-np`` slots, and caps a slot at the
    model's training context); None when it does not say (0 in router mode)."""
    settings = props.get("default_generation_settings")
    return token_count(settings.get("n_ctx")) if isinstance(settings, dict) else None


def _finish_reason(reason: Any) -> str:
    """OpenAI's ``length`` and ``tool_calls`` stay; any other reason is a stop."""
    return reason if reason in ("length", "tool_calls") else "stop"


async def healthy(session: aiohttp.ClientSession, url: str) -> bool:
    """llama-server's ``/health`` says 200 (ready; 503 while it loads the model)."""
    try:
        async with session.get(url + "/health") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
