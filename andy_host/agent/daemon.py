"""The host daemon: backend, catalog, job runner and link, with one owner for each task."""

from __future__ import annotations

import asyncio
import platform
import signal

import aiohttp
import structlog

from andy_host.agent.backends import make_backend
from andy_host.agent.catalog import Catalog
from andy_host.agent.identity import host_id, state_dir
from andy_host.agent.jobs import JobRunner
from andy_host.agent.link import Link
from andy_host.agent.managed import ManagedLlamaServer
from andy_host.config import Config
from andy_host.protocol import Heartbeat, Hello, Models, encode

log = structlog.get_logger("andy_host.agent")


async def run_agent(config: Config, stop: asyncio.Event) -> None:
    agent = config.agent
    name = agent.effective_name()
    my_id = host_id(state_dir(agent.state_dir), name)
    structlog.contextvars.bind_contextvars(host_id=my_id)
    managed: ManagedLlamaServer | None = None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        url = config.backend.effective_url()
        if config.backend.managed:
            managed = ManagedLlamaServer(config.backend)
            url = managed.url
        backend = make_backend(config.backend, session, url)
        catalog = Catalog(backend)
        runner = JobRunner(backend, catalog, agent.max_concurrency)
        backend_version: str | None = None

        def hello() -> Hello:
            return Hello(
                name=name,
                host_id=my_id,
                token=agent.token or None,
                backend=backend.kind,
                backend_version=backend_version,
                models=catalog.models,
                capacity=agent.max_concurrency,
                hardware={"platform": platform.platform(), "machine": platform.machine()},
                jobs=list(runner.tasks),
            )

        def heartbeat() -> Heartbeat:
            down = not catalog.reachable
            return Heartbeat(
                active=runner.active,
                status="backend_down" if down else "active",
                reason=catalog.error if down else None,
                loaded=[m.name for m in catalog.models if m.loaded],
            )

        link = Link(agent, hello, heartbeat, runner)

        async def on_backend_change() -> None:
            if await catalog.refresh():
                await link.send_quietly(encode(Models(models=catalog.models)))
                await link.send_quietly(encode(heartbeat()))

        async def poll_backend() -> None:
            while True:
                await asyncio.sleep(config.backend.poll_interval)
                await on_backend_change()

        log.info("agent.starting", name=name, coordinator=agent.coordinator, backend=backend.kind, url=url)
        tasks: list[asyncio.Task[None]] = []
        try:
            if managed is not None:
                await managed.start()
                tasks.append(asyncio.create_task(managed.supervise(on_backend_change)))
            await catalog.refresh()
            backend_version = await backend.version()
            tasks.append(asyncio.create_task(poll_backend()))
            link_task = asyncio.create_task(link.run(stop))
            tasks.append(link_task)
            await asyncio.wait([link_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if link_task.done() and link_task.exception() is not None:
                raise link_task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            await runner.cancel_all()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if managed is not None:
                await managed.stop()
            log.info("agent.stopped", served=runner.served)


def run_agent_forever(config: Config) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(config, stop)

    asyncio.run(main())
