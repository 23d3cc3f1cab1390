"""Ollama through its native API (docs/api.md in ollama/ollama).

``/api/tags`` lists models with size and quantization, ``/api/ps`` the loaded ones,
``/api/show`` capabilities and context length, ``/api/chat`` streams NDJSON,
``/api/embed`` embeds. Options map: temperature, top_p, num_predict, stop, seed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from andy_host import modelnames
from andy_host.agent.backends.base import (
    UNREACHABLE,
    Backend,
    ChatPiece,
    Discovered,
    Embeddings,
    line_batches,
    raise_for_backend,
)
from andy_host.errors import BackendError, BackendUnavailable
from andy_host.protocol import CANNOT_EMBED, ModelInfo

OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "stop": "stop",
    "seed": "seed",
}


class OllamaBackend(Backend):
    kind = "ollama"

    async def version(self) -> str | None:
        try:
            body = await self._get_json("/api/version")
        except BackendError:
            return None
        return body.get("version") if isinstance(body, dict) else None

    async def _show(self, name: str) -> dict[str, Any]:
        try:
            body = await self._post_json("/api/show", {"model": name}, probe=True)
        except BackendError:
            return {}
        return body if isinstance(body, dict) else {}

    async def discover(self) -> list[Discovered]:
        body = await self._get_json("/api/tags")
        loaded = set(await self.loaded())
        found = []
        for item in body.get("models", []) if isinstance(body, dict) else []:
            name = item.get("name") or item.get("model")
            if not isinstance(name, str):
                continue
            details = item.get("details") or {}
            show = await self._show(name)
            capabilities = show.get("capabilities")
            info = show.get("model_info") or {}
            arch = info.get("general.architecture")
            context = info.get(f"{arch}.context_length") if arch else None
            found.append(
                Discovered(
                    backend_id=name,
                    info=ModelInfo(
                        name=modelnames.canonical(name),
                        size=item.get("size") if isinstance(item.get("size"), int) else None,
                        quantization=details.get("quantization_level"),
                        family=details.get("family"),
                        context_length=context if isinstance(context, int) else None,
                        loaded=name in loaded,
                        embed="embedding" in capabilities if isinstance(capabilities, list) else True,
                    ),
                )
            )
        return found

    async def loaded(self) -> list[str]:
        try:
            body = await self._get_json("/api/ps")
        except BackendError:
            return []
        return [m["name"] for m in body.get("models", []) if isinstance(m, dict) and "name" in m]

    async def chat(self, backend_id: str, request: dict[str, Any]) -> AsyncIterator[ChatPiece]:
        options = {OPTION_NAMES[k]: request[k] for k in OPTION_NAMES if k in request}
        stream = bool(request.get("stream", True))
        body = {"model": backend_id, "messages": request["messages"], "stream": stream, "options": options}
        if not stream:  # one object, as the last line of a stream would be
            answer = await self._post_json("/api/chat", body)
            if not isinstance(answer, dict) or not answer.get("done"):
                raise BackendError(502, f"Ollama's answer is not a finished message: {str(answer)[:80]}")
            yield _final(answer, [(answer.get("message") or {}).get("content") or ""])
            return
        try:
            async with self._post("/api/chat", body, self.timeout) as resp:
                await raise_for_backend(resp)
                async for lines in line_batches(resp.content):
                    texts: list[str] = []
                    for line in lines:
                        try:
                            event = orjson.loads(line)
                        except orjson.JSONDecodeError:
                            raise BackendError(502, f"Ollama sent a malformed line: {line[:80]!r}") from None
                        if "error" in event:
                            raise BackendError(500, str(event["error"]))
                        content = (event.get("message") or {}).get("content") or ""
                        if content:
                            texts.append(content)
                        if event.get("done"):
                            yield _final(event, texts)
                            return
                    if texts:
                        yield ChatPiece(content="".join(texts), pieces=len(texts))
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


def _final(event: dict[str, Any], texts: list[str]) -> ChatPiece:
    """The piece of Ollama's final message (``done: true``): finish reason and counts."""
    return ChatPiece(
        content="".join(texts),
        pieces=len(texts),
        finish_reason="length" if event.get("done_reason") == "length" else "stop",
        usage={
            "prompt_tokens": int(event.get("prompt_eval_count", 0)),
            "completion_tokens": int(event.get("eval_count", 0)),
        },
    )
