"""A raw SSE client for the tests: what exactly did the client receive?"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class StreamResult:
    status: int
    text: str = ""
    finish_reason: str | None = None
    done: bool = False  # saw data: [DONE]
    error: dict[str, Any] | None = None  # an error event, or the HTTP error body
    events: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        if self.status != 200:
            return "http_error"
        if self.error is not None and not self.done:
            return "error_event"
        if self.done and self.finish_reason and self.error is None:
            return "complete"
        return "broken"  # ended without [DONE] or an explicit error: must never happen


def chat_stream(base: str, model: str, content: str, timeout: float = 60, **extra: Any) -> StreamResult:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True, **extra}
    headers = extra.pop("headers", None) or {}
    body.pop("headers", None)
    with httpx.stream("POST", base + "/api/andy/v1/chat/completions", json=body, timeout=timeout, headers=headers) as resp:
        result = StreamResult(status=resp.status_code, headers=dict(resp.headers))
        if resp.status_code != 200:
            resp.read()
            result.error = resp.json().get("error")
            return result
        try:
            for line in resp.iter_lines():
                _event(result, line)
        except httpx.HTTPError:
            pass  # a cut connection: outcome() says "broken"
    return result


async def achat_stream(base: str, model: str, content: str, within: float = 60, **extra: Any) -> StreamResult:
    """``chat_stream`` for tests that run in an event loop (the in-process layer)."""
    headers = extra.pop("headers", None) or {}
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True, **extra}
    async with httpx.AsyncClient(timeout=within) as client:
        async with client.stream("POST", base + "/api/andy/v1/chat/completions", json=body, headers=headers) as resp:
            result = StreamResult(status=resp.status_code, headers=dict(resp.headers))
            if resp.status_code != 200:
                await resp.aread()
                result.error = resp.json().get("error")
                return result
            try:
                async for line in resp.aiter_lines():
                    _event(result, line)
            except httpx.HTTPError:
                pass  # a cut connection: outcome() says "broken"
    return result


def _event(result: StreamResult, line: str) -> None:
    if not line.startswith("data: "):
        return
    result.events += 1
    payload = line[6:]
    if payload == "[DONE]":
        result.done = True
        return
    event = json.loads(payload)
    if "error" in event:
        result.error = event["error"]
        return
    for choice in event.get("choices", []):
        result.text += choice.get("delta", {}).get("content") or ""
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
