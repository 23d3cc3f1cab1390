"""A fake llama-server speaking the API of llama.cpp's tools/server (README there).

Implements ``/health``, ``/props``, ``/v1/models``, ``/v1/chat/completions`` (JSON and
SSE with ``data: [DONE]``) and ``/v1/embeddings``, with OpenAI-shaped errors. Used in
tests where the real llama-server is not the point, and as the benchmark stub.
Run: ``python -m tests.fakes.llamacpp --port 0 --model NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

from tests.fakes.common import embedding, generate, serve


def error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "type": kind}}, status=status)


def make_app(args: argparse.Namespace) -> web.Application:
    model = args.model
    delay = args.token_delay

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def props(_: web.Request) -> web.Response:
        return web.json_response({"model_alias": model, "total_slots": 4, "build_info": "b0-fake"})

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "llamacpp", "meta": {"n_ctx_train": 8192}}]}
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "invalid JSON")
        stop = body.get("stop") or []
        tokens, reason = generate(args.label, body.get("messages", []), body.get("max_tokens"), stop if isinstance(stop, list) else [stop])
        created = int(time.time())
        usage = {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": reason}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(delta: dict[str, str], finish: str | None) -> bytes:
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        await resp.write(event({"role": "assistant", "content": None}, None))  # type: ignore[dict-item]
        for token in tokens:
            if delay:
                await asyncio.sleep(delay)
            await resp.write(event({"content": token}, None))
        await resp.write(event({}, reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            tail = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}
            await resp.write(f"data: {json.dumps(tail)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
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
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="fake-llama")
    parser.add_argument("--label", default="llamacpp")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=True)
    serve(make_app, parser)


if __name__ == "__main__":
    main()
