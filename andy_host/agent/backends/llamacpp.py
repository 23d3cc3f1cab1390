"""llama.cpp's ``llama-server`` through its HTTP API.

``/health`` (200 when ready, 503 while loading), ``/v1/models``, ``/props``,
``/v1/chat/completions`` with SSE, ``/v1/embeddings`` (needs ``--embeddings``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
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

CHAT_FIELDS = ("temperature", "top_p", "max_tokens", "stop", "seed")


class LlamaCppBackend(Backend):
    kind = "llamacpp"

    async def version(self) -> str | None:
        try:
            props = await self._get_json("/props")
        except BackendError:
            return None
        build = props.get("build_info") if isinstance(props, dict) else None
        return str(build) if build else None

    async def discover(self) -> list[Discovered]:
        body = await self._get_json("/v1/models")
        data = body.get("data", []) if isinstance(body, dict) else []
        found = []
        for item in data:
            backend_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(backend_id, str) or not backend_id:
                continue
            meta = item.get("meta") or {}
            name = self.config.model_name or backend_id
            found.append(
                Discovered(
                    backend_id=backend_id,
                    info=ModelInfo(
                        name=modelnames.served_name(name),
                        size=meta.get("size") if isinstance(meta.get("size"), int) else None,
                        context_length=meta.get("n_ctx_train")
                        if isinstance(meta.get("n_ctx_train"), int)
                        else None,
                        loaded=True,
                        embed=self.config.embeddings,
                    ),
                )
            )
        return found

    async def loaded(self) -> list[str]:
        return [d.backend_id for d in await self.discover()]

    async def chat(self, backend_id: str, request: dict[str, Any]) -> AsyncIterator[ChatPiece]:
        body: dict[str, Any] = {"model": backend_id, "messages": request["messages"]}
        body.update({k: request[k] for k in CHAT_FIELDS if k in request})
        if not request.get("stream", True):
            yield await self._whole(body)
            return
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        try:
            async with self._post("/v1/chat/completions", body, self.timeout) as resp:
                await raise_for_backend(resp)
                finished = False
                async for lines in line_batches(resp.content):
                    piece = ChatPiece()
                    texts: list[str] = []
                    for line in lines:
                        line = line.strip()
                        if line.startswith(b"error:"):
                            raise BackendError(500, line[6:].decode(errors="replace").strip())
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            break
                        try:
                            event = orjson.loads(payload)
                        except orjson.JSONDecodeError:
                            raise BackendError(502, f"llama-server sent a malformed chunk: {payload[:80]!r}") from None
                        if "error" in event:
                            err = event["error"]
                            message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                            status = int(err.get("code", 500)) if isinstance(err, dict) else 500
                            raise BackendError(status, message)
                        choices = event.get("choices") or []
                        if choices:
                            choice = choices[0]
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                texts.append(text)
                            reason = choice.get("finish_reason")
                            if reason:
                                piece.finish_reason = _finish_reason(reason)
                                finished = True
                        usage = event.get("usage")
                        if isinstance(usage, dict):
                            piece.usage = {
                                "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                                "completion_tokens": int(usage.get("completion_tokens", 0)),
                            }
                    piece.content = "".join(texts)
                    piece.pieces = len(texts)
                    if piece.content or piece.finish_reason or piece.usage:
                        yield piece
                if not finished:
                    raise BackendError(502, "llama-server ended the stream without a finish_reason")
        except UNREACHABLE as exc:
            raise BackendUnavailable(f"llama-server stream failed: {exc!r}") from None

    async def _whole(self, body: dict[str, Any]) -> ChatPiece:
        """A non-streamed answer, in one piece."""
        answer = await self._post_json("/v1/chat/completions", body)
        try:
            choice = answer["choices"][0]
            content = choice["message"].get("content") or ""
            usage = answer.get("usage") or {}
            prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise BackendError(502, f"llama-server's answer has no message: {str(answer)[:80]}") from None
        return ChatPiece(
            content=content if isinstance(content, str) else str(content),
            finish_reason=_finish_reason(choice.get("finish_reason")),
            usage={"prompt_tokens": prompt, "completion_tokens": completion},
            pieces=max(completion, 1),
        )

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


def _finish_reason(reason: Any) -> str:
    """OpenAI's ``length`` stays; any other reason llama-server gives is a stop."""
    return "length" if reason == "length" else "stop"


async def healthy(session: aiohttp.ClientSession, url: str) -> bool:
    """llama-server's ``/health`` says 200 (ready; 503 while it loads the model)."""
    try:
        async with session.get(url + "/health") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
