"""Ollama through its native API (docs/api.md in ollama/ollama).

``/api/tags`` lists models with size and quantization, ``/api/ps`` the loaded ones
(with the context each was loaded with, what a request gets: the host's
``served_context``), ``/api/show`` capabilities ("tools", "embedding"), the trained
context length and any ``num_ctx`` the Modelfile sets, ``/api/chat``
streams NDJSON (tools, ``format``: "json" or a JSON schema, log probabilities from
0.12.11), ``/api/generate`` with ``raw`` continues a prompt as is, ``/api/embed``
embeds. Options map: temperature, top_p, num_predict, stop, seed and the penalties.
Ollama has no ``tool_choice``: a host on it does not offer FEATURE_TOOL_CHOICE.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

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
    ChatRequest,
    CompletionRequest,
    Message,
    ModelInfo,
    Sampling,
    ToolCall,
)

OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "stop": "stop",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
LOGPROBS_SINCE = (0, 12, 11)  # the first Ollama with logprobs in /api/chat and /api/generate


class OllamaBackend(Backend):
    kind = "ollama"

    async def version(self) -> str | None:
        try:
            body = await self._get_json("/api/version")
        except BackendError:
            return None
        return body.get("version") if isinstance(body, dict) else None

    async def features(self) -> set[str]:
        features = {FEATURE_JSON_SCHEMA, FEATURE_COMPLETION}
        if _version_tuple(await self.version()) >= LOGPROBS_SINCE:
            features.add(FEATURE_LOGPROBS)
        return features

    async def _show(self, name: str) -> dict[str, Any]:
        try:
            body = await self._post_json("/api/show", {"model": name}, probe=True)
        except BackendError:
            return {}
        return body if isinstance(body, dict) else {}

    async def discover(self) -> list[Discovered]:
        body = await self._get_json("/api/tags")
        running = await self._running()
        found = []
        for item in body.get("models", []) if isinstance(body, dict) else []:
            name = item.get("name") or item.get("model")
            if isinstance(name, str):
                found.append(Discovered(backend_id=name, info=await self._info(name, item, running)))
        return found

    async def _info(self, name: str, item: dict[str, Any], running: dict[str, int | None]) -> ModelInfo:
        details = item.get("details") or {}
        show = await self._show(name)
        capabilities = show.get("capabilities")
        info = show.get("model_info") or {}
        arch = info.get("general.architecture")
        context = token_count(info.get(f"{arch}.context_length") if arch else None)
        loaded = name in running
        known = isinstance(capabilities, list)
        caps: list[Any] = capabilities if isinstance(capabilities, list) else []
        return ModelInfo(
            name=modelnames.canonical(name),
            size=item.get("size") if isinstance(item.get("size"), int) else None,
            quantization=details.get("quantization_level"),
            family=details.get("family"),
            context_length=context,
            loaded=loaded,
            served_context=running.get(name) or _num_ctx(show.get("parameters"), context),
            embed="embedding" in caps if known else True,
            tools="tools" in caps,
            chat="completion" in caps if known else True,
        )

    async def loaded(self) -> list[str]:
        return list(await self._running())

    async def _running(self) -> dict[str, int | None]:
        """The loaded models (``/api/ps``), each with the context it was loaded with
        (``context_length``, in Ollama since 0.6; None where not said)."""
        try:
            body = await self._get_json("/api/ps")
        except BackendError:
            return {}
        models = body.get("models", []) if isinstance(body, dict) else []
        return {m["name"]: token_count(m.get("context_length")) for m in models
                if isinstance(m, dict) and isinstance(m.get("name"), str)}

    def chat(self, backend_id: str, request: ChatRequest) -> AsyncIterator[ChatPiece]:
        return self._generate("/api/chat", chat_body(backend_id, request), request.stream)

    def complete(self, backend_id: str, request: CompletionRequest) -> AsyncIterator[ChatPiece]:
        body = {"model": backend_id, "prompt": request.prompt, "raw": True, **_sampling(request)}
        return self._generate("/api/generate", body, request.stream)

    async def _generate(self, path: str, body: dict[str, Any], stream: bool) -> AsyncIterator[ChatPiece]:
        body["stream"] = stream
        if not stream:  # one object, as the last line of a stream would be
            answer = await self._post_json(path, body)
            if not isinstance(answer, dict) or not answer.get("done"):
                raise BackendError(502, f"Ollama's answer is not a finished message: {str(answer)[:80]}")
            yield _final(answer, _Pieces(answer))
            return
        try:
            async with self._post(path, body, self.timeout) as resp:
                await raise_for_backend(resp)
                async for lines in line_batches(resp.content):
                    pieces = _Pieces()
                    for line in lines:
                        event = _event(line)
                        pieces.add(event)
                        if event.get("done"):
                            yield _final(event, pieces)
                            return
                    if pieces.texts or pieces.logprobs or pieces.calls:
                        yield pieces.piece()
                raise BackendError(502, "Ollama ended the stream without a final done message")
        except UNREACHABLE as exc:
            raise BackendUnavailable(f"Ollama stream failed: {exc!r}") from None

    async def embed(self, backend_id: str, inputs: list[str]) -> Embeddings:
        try:
            body = await self._post_json("/api/embed", {"model": backend_id, "input": inputs})
        except BackendError as exc:
            if exc.status == 400 or "does not support" in exc.message:
                message = f"this model cannot create embeddings: {exc.message}"
                raise BackendError(400, message, code=CANNOT_EMBED) from None
            raise
        return Embeddings(vectors=body["embeddings"], prompt_tokens=int(body.get("prompt_eval_count", 0)))


# --- requests, in Ollama's shape -----------------------------------------------------------


def _sampling(request: Sampling) -> dict[str, Any]:
    body: dict[str, Any] = {
        "options": {name: getattr(request, key) for key, name in OPTION_NAMES.items()
                    if getattr(request, key) not in (None, [])},
    }
    if request.response_format == "json_schema" and request.json_schema is not None:
        body["format"] = request.json_schema
    elif request.response_format == "json_object":
        body["format"] = "json"
    if request.logprobs:
        body["logprobs"] = True
        if request.top_logprobs:
            body["top_logprobs"] = request.top_logprobs
    return body


def _arguments(text: str) -> Any:
    """Ollama carries a call's arguments as an object; OpenAI as JSON text."""
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _message(message: Message, names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                             for c in message.tool_calls]
        names.update((c.id, c.name) for c in message.tool_calls)
    if message.role == "tool":
        name = message.name or names.get(message.tool_call_id or "")
        if name:
            out["tool_name"] = name
        if message.tool_call_id:
            out["tool_call_id"] = message.tool_call_id
    return out


def chat_body(backend_id: str, request: ChatRequest) -> dict[str, Any]:
    if request.tool_choice in ("required", "function"):
        raise BackendError(400, "Ollama cannot be made to call a tool (tool_choice required or a named function)")
    names: dict[str, str] = {}  # tool call id -> the tool's name (Ollama matches results by name)
    body: dict[str, Any] = {"model": backend_id, "messages": [_message(m, names) for m in request.messages],
                            **_sampling(request)}
    if request.tools and request.tool_choice != "none":
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in request.tools
        ]
    return body


# --- answers --------------------------------------------------------------------------


def _event(line: bytes) -> dict[str, Any]:
    event = json_object(line, "Ollama")
    if "error" in event:
        raise BackendError(500, str(event["error"]))
    return event


class _Pieces:
    """What some NDJSON lines carried: text, tool calls, log probabilities."""

    def __init__(self, event: dict[str, Any] | None = None) -> None:
        self.texts: list[str] = []
        self.calls: list[ToolCall] = []
        self.logprobs: list[Any] = []
        if event is not None:
            self.add(event)

    def add(self, event: dict[str, Any]) -> None:
        message = event.get("message") or {}
        text = message.get("content") if "message" in event else event.get("response")
        if text:
            self.texts.append(text)
        for raw in message.get("tool_calls") or event.get("tool_calls") or []:
            if not isinstance(raw, dict):
                continue
            function = raw.get("function") or {}
            self.calls.append(ToolCall(id=raw.get("id") or f"call_{secrets.token_hex(12)}",
                                       name=str(function.get("name") or ""),
                                       arguments=json.dumps(function.get("arguments") or {})))
        self.logprobs.extend(token_logprobs(event.get("logprobs")))

    def piece(self) -> ChatPiece:
        return ChatPiece(content="".join(self.texts), pieces=len(self.texts),
                         logprobs=self.logprobs or None, tool_calls=bounded_calls(self.calls))


def _final(event: dict[str, Any], pieces: _Pieces) -> ChatPiece:
    """The piece of Ollama's final message (``done: true``): finish reason and counts."""
    piece = pieces.piece()
    if piece.tool_calls:
        piece.finish_reason = "tool_calls"
    else:
        piece.finish_reason = "length" if event.get("done_reason") == "length" else "stop"
    piece.usage = {
        "prompt_tokens": int(event.get("prompt_eval_count", 0)),
        "completion_tokens": int(event.get("eval_count", 0)),
    }
    return piece


def _num_ctx(parameters: Any, trained: int | None) -> int | None:
    """The context a model not loaded now will be served with, when its Modelfile sets
    it (``/api/show`` ``parameters``: ``num_ctx 8192``; Ollama caps it at the trained
    context); None otherwise (the server's default, OLLAMA_CONTEXT_LENGTH, is not told)."""
    if not isinstance(parameters, str):
        return None
    found = re.search(r"^\s*num_ctx\s+(\d{1,10})\s*$", parameters, re.MULTILINE)
    value = token_count(int(found.group(1))) if found else None
    return min(value, trained) if value is not None and trained else value


def _version_tuple(version: str | None) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version or "")[:3]
    return tuple(int(n) for n in numbers) if numbers else (0,)
