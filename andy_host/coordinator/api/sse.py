"""Answers as they stream, in each API's shape: OpenAI's server-sent events
(``chat.completion.chunk`` or ``text_completion`` lines, then ``[DONE]``); the Ollama
API's NDJSON lives with that API. A writer turns the relay's items into bytes."""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

import orjson

from andy_host.errors import APIError
from andy_host.protocol import Chunk, Done, TokenLogprob, ToolCall

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


class StreamWriter(Protocol):
    """What a streamed answer is written with."""

    headers: dict[str, str]

    def start(self) -> bytes: ...
    def chunk(self, chunk: Chunk) -> bytes: ...
    def end(self, done: Done) -> bytes: ...
    def error(self, error: APIError) -> bytes: ...


def usage_of(done: Done) -> dict[str, int]:
    prompt = done.usage.get("prompt_tokens", 0)
    completion = done.usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions ``logprobs``: parallel lists, and text offsets."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries], "text_offset": offsets}


def tool_calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


class ChunkWriter:
    """``chat.completion.chunk`` events; the id/model prefix is made once (the hot path)."""

    headers = SSE_HEADERS

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        created = int(time.time())
        self.head = (
            '{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
            '"system_fingerprint":null,"choices":'
        ) % (completion_id, created, json.dumps(model))
        self.tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self.include_usage = include_usage

    def delta(self, delta: str, finish_reason: str | None = None, logprobs: str = "null") -> bytes:
        reason = "null" if finish_reason is None else f'"{finish_reason}"'
        return (
            f'data: {self.head}[{{"index":0,"delta":{delta},"logprobs":{logprobs},"finish_reason":{reason}}}]'
            f"{self.tail}"
        ).encode()

    def start(self) -> bytes:
        return self.delta('{"role":"assistant","content":""}')

    def chunk(self, chunk: Chunk) -> bytes:
        logprobs = orjson.dumps(chat_logprobs(chunk.logprobs)).decode() if chunk.logprobs else "null"
        return self.delta('{"content":%s}' % orjson.dumps(chunk.content).decode(), logprobs=logprobs)

    def end(self, done: Done) -> bytes:
        out = b""
        if done.logprobs:
            out += self.chunk(Chunk(id=done.id, content="", logprobs=done.logprobs))
        if done.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(tool_calls_json(done.tool_calls))]
            out += self.delta(orjson.dumps({"tool_calls": calls}).decode())
        out += self.delta("{}", done.finish_reason)
        if self.include_usage:
            out += f'data: {self.head}[],"usage":{json.dumps(usage_of(done))}}}\n\n'.encode()
        return out + b"data: [DONE]\n\n"

    def error(self, error: APIError) -> bytes:
        return sse(error.body())


class CompletionWriter:
    """``text_completion`` events of the legacy completions API."""

    headers = SSE_HEADERS

    def __init__(self, completion_id: str, model: str, include_usage: bool, echo: str = "") -> None:
        self.base = {"id": completion_id, "object": "text_completion", "created": int(time.time()), "model": model}
        self.include_usage, self.echo, self.offset = include_usage, echo, 0

    def _event(self, text: str, finish_reason: str | None, logprobs: list[TokenLogprob] | None) -> bytes:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason,
                  "logprobs": completion_logprobs(logprobs, self.offset) if logprobs else None}
        self.offset += len(text)
        return sse({**self.base, "choices": [choice]})

    def start(self) -> bytes:
        return self._event(self.echo, None, None) if self.echo else b""

    def chunk(self, chunk: Chunk) -> bytes:
        return self._event(chunk.content, None, chunk.logprobs)

    def end(self, done: Done) -> bytes:
        out = self._event("", done.finish_reason, done.logprobs)
        if self.include_usage:
            out += sse({**self.base, "choices": [], "usage": usage_of(done)})
        return out + b"data: [DONE]\n\n"

    def error(self, error: APIError) -> bytes:
        return sse(error.body())
