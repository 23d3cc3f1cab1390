"""The in-process test layer: a coordinator, host agents and fake backends as tasks in
the test's own event loop, on 127.0.0.1 port 0, in milliseconds.

As uvicorn's and python-websockets' test helpers do, each part runs as the real code
does (``build_app`` behind an ``AppRunner``, ``Agent.run``, the fakes' aiohttp apps),
only not in a process of its own. Tests wait on the coordinator's state (``until``),
never on log lines. The fakes follow Ollama's documented API and llama.cpp's server
API, as in the process-level tests (neither server can run here in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import openai
from aiohttp import web
from aiohttp.test_utils import TestServer

from andy_host.agent.daemon import Agent
from andy_host.config import AgentConfig, BackendConfig, Config, ControlsConfig, CoordinatorConfig
from andy_host.coordinator.hosts.registry import REGISTRY, Registry
from andy_host.coordinator.observe.stats import STATS
from andy_host.coordinator.runtime.app import build_app
from andy_host.coordinator.store.interface import STORE
from tests.harness.fakes import llamacpp, ollama

FAST = CoordinatorConfig(
    host="127.0.0.1", port=0, heartbeat_interval=0.5, host_timeout=3, queue_timeout=2, ttft_timeout=20,
    anon_per_minute=10**6, new_hosts_per_hour=10**6, flush_interval=0.2, metrics_cache_seconds=0,
)


async def until(condition: Callable[[], bool], within: float = 5, what: str = "condition") -> None:
    """Wait for ``condition()`` (checked every 5 ms), at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {within}s")
        await asyncio.sleep(0.005)


@dataclass
class Pool:
    """A running coordinator: its URL, its application (state), and an API key."""

    url: str
    app: web.Application
    key: str
    tmp: Path
    agents: list[Agent] = field(default_factory=list)

    @property
    def registry(self) -> Registry:
        return self.app[REGISTRY]

    @property
    def stats(self) -> Any:
        return self.app[STATS]

    def hosts_of(self, model: str) -> int:
        return len(self.registry.by_model.get(model, ()))

    async def models(self, expected: dict[str, int], within: float = 5) -> None:
        await until(lambda: all(self.hosts_of(m) == n for m, n in expected.items()), within,
                    f"models {expected}")

    def client(self, key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/api/andy/v1", api_key=key or self.key, max_retries=0,
                                  timeout=30)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30)


@contextlib.asynccontextmanager
async def coordinator(tmp: Path, **overrides: Any) -> AsyncIterator[Pool]:
    config = replace(FAST, db=str(tmp / "coordinator.db"), **overrides)
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    key, _ = await app[STORE].create_key("tests", 10**9, 10**9)
    pool = Pool(f"http://{host}:{port}", app, key, tmp)
    try:
        yield pool
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def fake(kind: str, **args: Any) -> AsyncIterator[str]:
    """A fake backend in this loop; yields its base URL."""
    if kind == "llamacpp":
        namespace = {"model": "m:latest", "label": "pool", "token_delay": 0.0, "embeddings": True, "echo": True,
                     "tools": True, "ctx_size": 8192, "n_ctx_train": 8192, "parallel": 4}
        make = llamacpp.make_app
    else:
        namespace = {"models": "m:latest", "embed_only": "", "failing": "", "label": "pool", "nothing_loaded": False,
                     "token_delay": 0.0, "no_tools": "", "version": "0.12.11", "num_ctx": 4096,
                     "modelfile_num_ctx": False}
        make = ollama.make_app
    async with TestServer(make(argparse.Namespace(**{**namespace, **args})), host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


@dataclass
class Running:
    """An agent running as a task: set ``drain`` (SIGTERM) or ``stop`` (Ctrl-C)."""

    agent: Agent
    stop: asyncio.Event
    drain: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def agent(pool: Pool, kind: str, backend_url: str, name: str, *, wait: bool = True,
                controls: ControlsConfig | None = None, **overrides: Any) -> AsyncIterator[Running]:
    """A host agent joined to ``pool`` as a task of this loop."""
    agent_config = AgentConfig(coordinator=[pool.url], name=name, state_dir=str(pool.tmp / "state"),
                               heartbeat_interval=1, reconnect_min=0.05, reconnect_max=0.3)
    for key, value in overrides.items():
        setattr(agent_config, key, value)
    config = Config(agent=agent_config, backend=BackendConfig(kind=kind, url=backend_url, poll_interval=1),
                    controls=controls or ControlsConfig())
    host = Agent(config)
    stop, drain = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(host.run(stop, drain), name=f"agent-{name}")
    try:
        if wait:
            await until(host.connected, 10, f"agent {name} connected")
        pool.agents.append(host)
        yield Running(host, stop, drain, task)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


async def fault(url: str, mode: str | None, count: int = 1, **extra: Any) -> None:
    async with httpx.AsyncClient() as client:
        (await client.post(url + "/_fault", json={"mode": mode, "count": count, **extra})).raise_for_status()


async def backend_stats(url: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        stats: dict[str, int] = (await client.get(url + "/_stats")).json()
        return stats
