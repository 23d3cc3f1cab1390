"""Server-sent events in OpenAI's shape: ``chat.completion.chunk`` lines, ``[DONE]``."""

from __future__ import annotations

import json
import time

import orjson

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


class ChunkWriter:
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
