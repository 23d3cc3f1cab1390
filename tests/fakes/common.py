"""Shared by the fake backends: deterministic generation, stop strings, embeddings."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import sys
from collections.abc import Callable

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
