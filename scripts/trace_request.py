#!/usr/bin/env python3
"""Trace one streamed chat through an in-process pool: which coordinator functions run,
in how many modules, and how often the path re-enters each module.

    .venv/bin/python scripts/trace_request.py [TREE]     (TREE: a source tree; default .)

The pool is the test harness's in-process one (a coordinator, one agent, the fake
llama.cpp backend). A first request warms it up; the second is traced with
``sys.setprofile``. Counted: Python functions in ``andy_host`` called on the coordinator's
side (not from the agent's frames: the host's side), from the client's request to the
end of its stream.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

TREE = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
sys.path.insert(0, str(TREE))
os.chdir(TREE)

try:
    from tests.harness import inproc  # the layout since issue 24
except ImportError:  # the flat layout before it
    from tests import inproc  # type: ignore[no-redef]

import httpx  # noqa: E402

SKIP = ("andy_host.agent", "andy_host.logs")


async def main() -> None:
    calls: list[tuple[str, str]] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if module.startswith("andy_host") and not module.startswith(SKIP) and not _on_the_host(frame):
            calls.append((module, frame.f_code.co_qualname))

    with tempfile.TemporaryDirectory() as tmp:
        async with inproc.coordinator(Path(tmp)) as pool, inproc.fake("llamacpp") as backend, \
                inproc.agent(pool, "llamacpp", backend, "traced"):
            await pool.models({"m:latest": 1})
            body = {"model": "m:latest", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
            async with httpx.AsyncClient(base_url=pool.url, timeout=30) as http:
                await _stream(http, pool.key, body)  # warm-up
                sys.setprofile(profile)
                await _stream(http, pool.key, body)
                sys.setprofile(None)
    functions = set(calls)
    modules = {m for m, _ in calls}
    entries: Counter[str] = Counter()
    previous = ""
    for module, _ in calls:
        if module != previous:
            entries[module] += 1
        previous = module
    if os.environ.get("TRACE_ALL"):
        for module, name in calls:
            print(f"    {module}.{name}")
    print(f"tree: {TREE}")
    print(f"distinct functions: {len(functions)} in {len(modules)} modules; calls: {len(calls)}")
    for module, count in entries.most_common(8):
        print(f"  {module}: entered {count} times, {len({f for m, f in functions if m == module})} functions")


def _on_the_host(frame: FrameType | None) -> bool:
    """Whether the call is the agent's (its protocol decoding, say), not the coordinator's."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(SKIP):
            return True
        frame = frame.f_back
    return False


async def _stream(http: httpx.AsyncClient, key: str, body: dict[str, Any]) -> None:
    async with http.stream("POST", "/api/andy/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            pass


if __name__ == "__main__":
    asyncio.run(main())
