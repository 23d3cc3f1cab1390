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
                if not line.startswith("data: "):
                    continue
                result.events += 1
                payload = line[6:]
                if payload == "[DONE]":
                    result.done = True
                    continue
                event = json.loads(payload)
                if "error" in event:
                    result.error = event["error"]
                    continue
                for choice in event.get("choices", []):
                    result.text += choice.get("delta", {}).get("content") or ""
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
        except httpx.HTTPError:
            pass  # a cut connection: outcome() says "broken"
    return result
