"""A raw host for the hostile-host tests: it speaks the websocket protocol itself (the
``websockets`` client, independent of the agent) and sends whatever a test scripts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from andy_host.protocol import PROTOCOL_VERSION

Serve = Callable[["RawHost", dict[str, Any]], Awaitable[None]]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/andy/hosts/ws"


def hello(name: str = "raw", models: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "name": name, "backend": "ollama",
            "models": models if models is not None else [{"name": "m:latest", "loaded": True}], "capacity": 4,
            **extra}


@dataclass
class RawHost:
    """One connection: hello, then a handler for each job it is given (run as a task)."""

    ws: ClientConnection
    welcome: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def chunk(self, job_id: str, content: str) -> None:
        await self.send({"type": "chunk", "id": job_id, "content": content})

    async def done(self, job_id: str, content: str = "", **usage: int) -> None:
        await self.send({"type": "done", "id": job_id, "finish_reason": "stop", "usage": usage, "content": content})

    async def serve(self, handler: Serve, heartbeat: float | None = 1.0) -> None:
        """Run ``handler`` for every job until the connection closes; heartbeat meanwhile."""
        tasks: set[asyncio.Task[None]] = set()
        beats = asyncio.create_task(self._beat(heartbeat)) if heartbeat else None
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame.get("type") == "job":
                    self.jobs.append(frame)
                    task = asyncio.create_task(handler(self, frame))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            for task in [*tasks, *([beats] if beats else [])]:
                task.cancel()

    async def _beat(self, every: float) -> None:
        try:
            while True:
                await asyncio.sleep(every)
                await self.send({"type": "heartbeat", "active": 0})
        except ConnectionClosed:
            pass


async def join(base: str, frame: dict[str, Any] | None = None, max_size: int | None = None) -> RawHost:
    """Connect and say hello; raises ConnectionClosed when the coordinator refuses."""
    ws = await connect(ws_url(base), max_size=max_size)
    await ws.send(json.dumps(frame or hello()))
    welcome = json.loads(await ws.recv())
    return RawHost(ws, welcome)


async def refused(base: str, frame: dict[str, Any]) -> tuple[int | None, str]:
    """Say hello and return how the coordinator closed the connection."""
    async with connect(ws_url(base)) as ws:
        await ws.send(json.dumps(frame))
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""
