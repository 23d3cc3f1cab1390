"""Shared by the fake backends: deterministic generation, stop strings, embeddings."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web


def generate(label: str, messages: list[dict[str, str]], max_tokens: int | None, stop: list[str]) -> tuple[list[str], str]:
    """Tokens of a deterministic reply and its finish reason ("stop" or "length")."""
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    text = f"{label} heard: {last}"
    reason = "stop"
    for s in stop:
        cut = text.find(s)
        if cut != -1:
            text = text[:cut]
    tokens = re.findall(r"\s*\S+|\s+$", text)
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, reason = tokens[:max_tokens], "length"
    return tokens, reason


def continuation(
    label: str, messages: list[dict[str, str]], max_tokens: int | None, stop: list[str], echo: bool
) -> tuple[list[str], str]:
    """Continue a final assistant message: the rest of the same deterministic reply,
    preceded by the prefix itself when the backend echoes it (llama.cpp does)."""
    prefix = messages[-1].get("content", "")
    tokens, reason = generate(label, messages[:-1], None, stop)
    full = "".join(tokens)
    rest = full[len(prefix):] if full.startswith(prefix) else full
    rest_tokens = re.findall(r"\s*\S+|\s+$", rest)
    if max_tokens is not None and len(rest_tokens) > max_tokens:
        rest_tokens, reason = rest_tokens[:max_tokens], "length"
    return ([prefix] if echo else []) + rest_tokens, reason


def embedding(text: str, dim: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 6) for b in digest[:dim]]


def serve(make_app: Callable[[argparse.Namespace], web.Application], parser: argparse.ArgumentParser) -> None:
    """Run the app on --port (0: a free one) and print ``PORT <n>`` once listening."""
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def main() -> None:
        runner = web.AppRunner(make_app(args), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        print(f"PORT {runner.addresses[0][1]}", flush=True)
        sys.stdout.flush()
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# --- tools, structured output, log probabilities, raw completion (both fakes) ------------


TOKENS = re.compile(r"\s*\S+|\s+$")


def last_words(text: str, n: int) -> str:
    return " ".join(re.findall(r"[\w'-]+", text)[-n:])


def tool_call(tools: list[dict[str, Any]], messages: list[dict[str, Any]], choice: Any) -> tuple[str, dict[str, Any]] | None:
    """The call a tool-capable model makes: to the first tool (the one named by the
    choice, when given), when the choice requires a call or the user asks to use a tool;
    never right after a tool result. Its string arguments are the user's last word."""
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if choice != "required" and "tool" not in last.lower():
        return None
    function = tools[0].get("function") or {}
    properties = (function.get("parameters") or {}).get("properties") or {}
    word = last_words(last, 1)
    return function.get("name", ""), {k: (word if (v or {}).get("type", "string") == "string" else 1)
                                      for k, v in properties.items()}


def structured(schema: dict[str, Any] | None, label: str, messages: list[dict[str, Any]]) -> str:
    """A JSON document, as a grammar-constrained model writes it: an object with each
    property of the schema ("answer" without one), strings from the user's words."""
    last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    properties = (schema or {}).get("properties") or {"answer": {"type": "string"}}
    values = {"string": last_words(last, 1) or label, "integer": len(last.split()), "number": 1.5, "boolean": True}
    return json.dumps({k: values.get((v or {}).get("type", "string"), None) for k, v in properties.items()})


def tool_result_reply(label: str, messages: list[dict[str, Any]]) -> str:
    return f"{label} read the tool's result: {messages[-1].get('content', '')}"


def token_logprobs(tokens: list[str], top: int) -> list[dict[str, Any]]:
    """Log probabilities as llama-server (and Ollama) give them: each token, and its
    alternatives (the token itself first)."""
    out = []
    for i, token in enumerate(tokens):
        logprob = -0.05 * (i % 7)
        alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        alternatives += [{"token": f" alt{j}", "logprob": logprob - 1.0 - j, "bytes": list(f" alt{j}".encode())}
                         for j in range(max(0, top - 1))]
        out.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                    "top_logprobs": alternatives[:top]})
    return out


def complete(label: str, prompt: str, max_tokens: int | None, stop: list[str]) -> tuple[list[str], str]:
    """A raw completion: the prompt continued with a deterministic text that names the
    prompt's last words (no chat template: nothing about roles)."""
    text = f" and then {label} continued after '{last_words(prompt, 3)}'."
    for s in stop:
        cut = text.find(s)
        if cut != -1:
            text = text[:cut]
    tokens = TOKENS.findall(text)
    if max_tokens is not None and max_tokens > 0 and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"
