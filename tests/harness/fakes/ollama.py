"""A fake Ollama server following Ollama's documented API (docs/api.md in ollama/ollama).

Ollama cannot be installed on these machines, so the adapter is tested against this.
It follows the docs, not our adapter: ``GET /api/version``, ``GET /api/tags`` (name,
model, modified_at, size, digest, details.{format,family,parameter_size,
quantization_level}), ``GET /api/ps``, ``POST /api/show`` (capabilities, model_info),
``POST /api/chat`` (``stream`` defaults to true: NDJSON objects with ``message`` and
``done: false``, then a final object with ``done: true``, ``done_reason``,
``prompt_eval_count``, ``eval_count`` and durations; options ``temperature``,
``top_p``, ``num_predict``, ``stop``, ``seed``; ``tools``: a call in its own object
before the final one, for models with the "tools" capability; ``format``: "json" or a
schema; ``logprobs``/``top_logprobs`` from 0.12.11), ``POST /api/generate`` (``raw``:
no template), ``POST /api/embed`` (``input`` string or list -> ``embeddings``). Unknown models answer 404 ``{"error": "model 'x' not found"}``.
A loaded model is served with ``--num-ctx`` tokens of context (Ollama's default 4096;
``/api/ps`` says it as ``context_length``, ``/api/show``'s ``parameters`` as ``num_ctx``
only with ``--modelfile-num-ctx``, a Modelfile that sets it); a chat longer than that
loses its oldest messages but the system ones and the last (Ollama's truncation), and
when even those do not fit is answered 400 ``the prompt is longer than the context
length currently available to the model; ...``. Tokens are counted as whitespace-separated
words, plus 4 a message.
``POST /_fault {"mode": "reject_prefix" | "cut", "count": n}``: the next n chats (-1:
all) refuse a final assistant message, or drop the connection halfway through a stream.

``--sample``: a model that samples (common.sample), the same model as the llama.cpp
fake's ``--sample``, in Ollama's shapes: ``options.temperature`` > 0 (unset: Ollama's
0.8) draws each reply token from the third on as its variant with p ~0.3, from
``options.seed`` when given; 0 is the plain reply; ``options.num_predict`` caps it (-1:
no cap). ``logprobs: true`` gives its distribution as Ollama 0.12.11 does (api.Logprob,
runner/ollamarunner): a top-level ``logprobs`` list, one ``{token, logprob, bytes,
top_logprobs: [{token, logprob, bytes}]}`` per generated token (``top_logprobs`` and
empty ``bytes`` omitted, omitempty; ``top_logprobs`` over 20 is a 400), in each streamed
object and accumulated in a whole answer; a continued assistant message is not echoed;
at the end of the reply the answer is empty with ``done_reason: "stop"`` and no
logprobs: Ollama computes none for the end-of-generation token.
Run: ``python -m tests.harness.fakes.ollama --port 0 --models sweaterdog/andy-4:latest``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
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


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


TOO_LONG = ("the prompt is longer than the context length currently available to the model; shorten the "
            "prompt, adjust the context length in settings, or use a model with a longer context length")


def make_app(args: argparse.Namespace) -> web.Application:
    num_ctx = getattr(args, "num_ctx", 4096)
    sampling = getattr(args, "sample", False)  # (an in-process app's arguments may not say)
    names = [n if ":" in n.rsplit("/", 1)[-1] else n + ":latest" for n in args.models.split(",")]
    embed_only = {n + ":latest" if ":" not in n else n for n in args.embed_only.split(",") if n}
    failing = {n + ":latest" if ":" not in n else n for n in args.failing.split(",") if n}
    no_tools = {n + ":latest" if ":" not in n else n for n in args.no_tools.split(",") if n}

    def find(name: str) -> str | None:
        full = name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
        return full if full in names else None

    def not_found(name: str) -> web.Response:
        return web.json_response({"error": f"model '{name}' not found"}, status=404)

    fault = {"reject_prefix": 0, "cut": 0}
    stats = {"requests": 0, "continuations": 0}

    async def set_fault(request: web.Request) -> web.Response:
        body = await request.json()
        for mode in fault:
            fault[mode] = body.get("count", 1) if body.get("mode") == mode else 0
        return web.json_response(fault)

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": args.version})

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": n, "model": n, "modified_at": now(), "size": 4_920_000_000, "digest": "sha256:" + "0" * 64,
             "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                         "parameter_size": "8.0B", "quantization_level": "Q4_K_M"}}
            for n in names
        ]})

    async def ps(_: web.Request) -> web.Response:
        if args.nothing_loaded:
            return web.json_response({"models": []})
        return web.json_response({"models": [
            {"name": names[0], "model": names[0], "size": 5_137_025_024, "digest": "sha256:" + "0" * 64,
             "details": {"format": "gguf", "family": "llama", "quantization_level": "Q4_K_M"},
             "expires_at": now(), "size_vram": 5_137_025_024, "context_length": num_ctx}
        ]})

    async def show(request: web.Request) -> web.Response:
        body = await request.json()
        name = find(body.get("model") or body.get("name") or "")
        if name is None:
            return not_found(body.get("model", ""))
        caps = ["embedding"] if name in embed_only else ["completion", "embedding"]
        if name not in embed_only and name not in no_tools:
            caps.append("tools")
        parameters = f"num_ctx                        {num_ctx}" if getattr(args, "modelfile_num_ctx", False) else ""
        return web.json_response({
            "modelfile": "", "parameters": parameters, "template": "{{ .Prompt }}",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
            "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
            "capabilities": caps,
        })

    def fitted(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The messages Ollama keeps in ``num_ctx`` (the oldest dropped, the system ones
        and the last kept); None when even those do not fit."""
        def count(kept: list[dict[str, Any]]) -> int:
            return sum(len(str(m.get("content") or "").split()) + 4 for m in kept)

        for start in range(len(messages)):
            kept = [m for m in messages[:start] if m.get("role") == "system"] + messages[start:]
            if count(kept) <= num_ctx:
                return kept
        return None

    async def chat(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "invalid character in JSON"}, status=400)
        name = find(body.get("model", ""))
        if name is None:
            return not_found(body.get("model", ""))
        if name in embed_only:
            return web.json_response({"error": f"\"{name}\" does not support chat"}, status=400)
        if name in failing:
            return web.json_response({"error": "llama runner process has terminated: CUDA error: out of memory"}, status=500)
        if body.get("tools") and name in no_tools:
            return web.json_response({"error": f"registry.ollama.ai/library/{name} does not support tools"}, status=400)
        options = body.get("options") or {}
        stop = options.get("stop") or []
        generating = request.path == "/api/generate"
        top = body.get("top_logprobs") or 0
        if sampling and not 0 <= top <= 20:  # as Ollama's handlers check it
            return web.json_response({"error": "top_logprobs must be between 0 and 20"}, status=400)
        num_predict = options.get("num_predict")
        num_predict = num_predict if num_predict is None or num_predict >= 0 else None  # -1: no limit
        temperature = options.get("temperature")
        temperature = 0.8 if temperature is None else float(temperature)  # Ollama's default
        messages = body.get("messages", []) if not generating else []
        if messages:
            kept = fitted(messages)
            if kept is None:
                return web.json_response({"error": TOO_LONG}, status=400)
            messages = kept
        call, drawn = None, None
        raw = generating and body.get("raw")
        if sampling and not raw and not (messages and messages[-1].get("role") == "tool"):  # the model's own words
            if messages and messages[-1].get("role") == "assistant":
                stats["continuations"] += 1
                if fault["reject_prefix"]:
                    fault["reject_prefix"] -= 1
                    return web.json_response({"error": "assistant prefill is not supported by this template"}, status=400)
            chat_messages = messages or [{"role": "user", "content": body.get("prompt", "")}]
            drawn = sample(args.label, chat_messages, num_predict, stop, temperature, options.get("seed"))
            tokens, reason = drawn.tokens, drawn.reason  # a continuation's prefix is not repeated
            if messages and messages[-1].get("role") != "assistant":
                call = tool_call(body.get("tools") or [], messages, None)
        elif generating:
            tokens, reason = complete(args.label, body.get("prompt", ""), options.get("num_predict"), stop) \
                if body.get("raw") else generate(args.label, [{"role": "user", "content": body.get("prompt", "")}],
                                                 options.get("num_predict"), stop)
        elif messages and messages[-1].get("role") == "assistant":
            stats["continuations"] += 1
            if fault["reject_prefix"]:
                fault["reject_prefix"] -= 1
                return web.json_response({"error": "assistant prefill is not supported by this template"}, status=400)
            # Ollama continues a final assistant message and does not echo it
            tokens, reason = continuation(args.label, messages, options.get("num_predict"), stop, echo=False)
        elif messages and messages[-1].get("role") == "tool":
            tokens, reason = TOKENS.findall(tool_result_reply(args.label, messages)), "stop"
        else:
            tokens, reason = generate(args.label, messages, options.get("num_predict"), stop)
            call = tool_call(body.get("tools") or [], messages, None)
        fmt = body.get("format")
        if fmt and call is None:
            tokens = TOKENS.findall(structured(fmt if isinstance(fmt, dict) else None, args.label,
                                               messages or [{"role": "user", "content": body.get("prompt", "")}]))
        if call is not None:
            tokens = []
        lps = token_logprobs(tokens, top) if body.get("logprobs") else None
        if drawn is not None and lps is not None and not (fmt or call):  # Ollama lists no end-of-generation token
            lps = [{k: v for k, v in e.items() if v != [] or k == "token"}  # omitempty: bytes, top_logprobs
                   for e in sampled_logprobs(drawn, top, ids=False, eos=False)]
        return await answer(request, body, name, tokens, reason, call, lps, generating)

    async def answer(request: web.Request, body: dict[str, Any], name: str, tokens: list[str], reason: str,
                     call: tuple[str, dict[str, Any]] | None, lps: list[dict[str, Any]] | None,
                     generating: bool) -> web.StreamResponse:
        def line(text: str, done: bool, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {"model": name, "created_at": now(), "done": done}
            if generating:
                out["response"] = text
            else:
                out["message"] = {"role": "assistant", "content": text}
            if logprobs:
                out["logprobs"] = logprobs
            return out

        final = {**line("", True), "done_reason": reason, "total_duration": 1_000_000, "load_duration": 1000,
                 "prompt_eval_count": 9, "prompt_eval_duration": 1000, "eval_count": len(tokens), "eval_duration": 1000}
        calls = [{"function": {"index": 0, "name": call[0], "arguments": call[1]}}] if call else None
        if body.get("stream") is False:  # answered once the whole generation is over
            if args.token_delay:
                await asyncio.sleep(args.token_delay * len(tokens))
            whole = {**final, **line("".join(tokens), True, lps)}
            if calls:
                whole["message"]["tool_calls"] = calls
            return web.json_response(whole)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        cut = fault["cut"] != 0
        if fault["cut"] > 0:
            fault["cut"] -= 1
        for i, token in enumerate(tokens):
            if cut and i == max(1, len(tokens) // 2):  # the connection drops mid-answer
                assert request.transport is not None
                request.transport.abort()
                return resp
            if args.token_delay:
                await asyncio.sleep(args.token_delay)
            await resp.write((json.dumps(line(token, False, [lps[i]] if lps else None)) + "\n").encode())
        if calls:  # tool calls come whole, in their own object before the final one
            with_calls = line("", False)
            with_calls["message"]["tool_calls"] = calls
            await resp.write((json.dumps(with_calls) + "\n").encode())
        await resp.write((json.dumps(final) + "\n").encode())
        return resp

    async def embed(request: web.Request) -> web.Response:
        body = await request.json()
        name = find(body.get("model", ""))
        if name is None:
            return not_found(body.get("model", ""))
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        return web.json_response({"model": name, "embeddings": [embedding(t) for t in inputs],
                                  "total_duration": 1000, "load_duration": 100,
                                  "prompt_eval_count": sum(len(t.split()) for t in inputs)})

    app = web.Application()
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/_fault", set_fault)
    app.router.add_get("/_stats", get_stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="sweaterdog/andy-4:latest")
    parser.add_argument("--embed-only", default="")
    parser.add_argument("--failing", default="", help="models whose chat answers 500")
    parser.add_argument("--label", default="ollama")
    parser.add_argument("--nothing-loaded", action="store_true", help="/api/ps lists no model")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--no-tools", default="", help="models without the tools capability")
    parser.add_argument("--version", default="0.12.11", help="what /api/version says (logprobs since 0.12.11)")
    parser.add_argument("--num-ctx", type=int, default=4096, help="the context a loaded model is served with")
    parser.add_argument("--modelfile-num-ctx", action="store_true", help="/api/show parameters say num_ctx")
    parser.add_argument("--sample", action="store_true",
                        help="a model that samples: answers vary with temperature and seed, logprobs are its distribution")
    serve(make_app, parser)


if __name__ == "__main__":
    main()
