"""The host daemon: backend, catalog, job runner and link, with one owner for each task."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from andy_host.agent.backends import make_backend
from andy_host.agent.catalog import Catalog
from andy_host.agent.controls import pause_reasons
from andy_host.agent.hardware import HardwareProbe
from andy_host.agent.identity import host_id, state_dir
from andy_host.agent.jobs import JobRunner
from andy_host.agent.link import Link
from andy_host.agent.managed import ManagedLlamaServer
from andy_host.agent.status import socket_path, status_server
from andy_host.aio import run_loop
from andy_host.config import Config
from andy_host.protocol import FEATURE_CONTINUE, Heartbeat, Hello, Models, encode

log = structlog.get_logger("andy_host.agent")


Reload = Callable[[], Config]
RESTART_ONLY = ("coordinator", "name", "token", "state_dir")


async def run_agent(
    config: Config,
    stop: asyncio.Event,
    drain: asyncio.Event | None = None,
    reload: asyncio.Event | None = None,
    load: Reload | None = None,
) -> None:
    """Serve until ``stop``; on ``drain``, finish running jobs (up to drain_timeout) first;
    on ``reload``, apply the config ``load`` returns (an invalid one is rejected)."""
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
        catalog = Catalog(backend, config.controls)
        probe = HardwareProbe()
        readings = probe.sample()
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
                hardware=readings,
                jobs=list(runner.tasks),
                features=[FEATURE_CONTINUE],
            )

        capacity_changed = False

        def heartbeat() -> Heartbeat:
            nonlocal capacity_changed
            down = not catalog.reachable
            status, reason = ("backend_down", catalog.error) if down else ("active", None)
            if runner.paused:
                status, reason = "paused", "; ".join(runner.paused)
            if runner.draining:
                status, reason = "draining", "host shutting down"
            return Heartbeat(
                active=runner.active,
                status=status,
                reason=reason,
                loaded=[m.name for m in catalog.models if m.loaded],
                capacity=agent.max_concurrency if capacity_changed else None,
                hardware=readings,
            )

        link = Link(agent, hello, heartbeat, runner)

        async def on_backend_change() -> None:
            if await catalog.refresh():
                await link.send_quietly(encode(Models(models=catalog.models)))
                await link.send_quietly(encode(heartbeat()))

        async def reloads() -> None:
            nonlocal capacity_changed
            assert reload is not None and load is not None
            while True:
                await reload.wait()
                reload.clear()
                try:
                    new = load()
                except Exception as exc:  # ConfigError or an unreadable file: keep the old one
                    log.error("config.reload_rejected", error=str(exc))
                    continue
                for key in RESTART_ONLY:
                    if getattr(new.agent, key) != getattr(agent, key):
                        log.warning("config.needs_restart", option=f"agent.{key}")
                if (new.backend.kind, new.backend.url) != (config.backend.kind, config.backend.url):
                    log.warning("config.needs_restart", option="backend.kind/url")
                if new.agent.max_concurrency != agent.max_concurrency:
                    agent.max_concurrency = new.agent.max_concurrency
                    runner.resize(new.agent.max_concurrency)
                    capacity_changed = True
                for key in ("heartbeat_interval", "reconnect_min", "reconnect_max", "drain_timeout"):
                    setattr(agent, key, getattr(new.agent, key))
                config.controls = catalog.controls = new.controls
                await on_backend_change()  # the shared models may have changed
                config.backend.poll_interval = new.backend.poll_interval
                log.info("config.reloaded", max_concurrency=agent.max_concurrency)
                await link.send_quietly(encode(heartbeat()))

        async def watch_controls() -> None:
            """Sample the hardware and apply the owner's controls every check_interval."""
            nonlocal readings
            while True:
                readings = probe.sample()
                reasons = pause_reasons(config.controls, readings)
                if reasons != runner.paused:
                    log.info("controls.paused" if reasons else "controls.resumed", reasons=reasons)
                    runner.paused = reasons
                    await link.send_quietly(encode(heartbeat()))
                await asyncio.sleep(config.controls.check_interval)

        async def poll_backend() -> None:
            while True:
                await asyncio.sleep(config.backend.poll_interval)
                await on_backend_change()

        started = time.time()

        def status() -> dict[str, Any]:
            beat = heartbeat()
            return {
                "name": name, "host_id": my_id, "pid": os.getpid(), "coordinator": agent.coordinator,
                "connected": link.connected.is_set(), "last_error": link.last_error,
                "status": beat.status, "reason": beat.reason, "pause_reasons": runner.paused,
                "jobs_in_flight": runner.active, "served": runner.served, "tokens": runner.tokens,
                "backend": {"kind": backend.kind, "url": url, "reachable": catalog.reachable,
                            "error": catalog.error, "models": [m.name for m in catalog.models]},
                "hardware": readings, "uptime": time.time() - started,
                "withheld_models": catalog.withheld,
            }

        log.info("agent.starting", name=name, coordinator=agent.coordinator, backend=backend.kind, url=url)
        tasks: list[asyncio.Task[Any]] = []
        status_socket = socket_path(state_dir(agent.state_dir), name)
        async with status_server(status_socket, status):
            try:
                if managed is not None:
                    await managed.start()
                    tasks.append(asyncio.create_task(managed.supervise(on_backend_change)))
                await catalog.refresh()
                backend_version = await backend.version()
                tasks.append(asyncio.create_task(poll_backend()))
                tasks.append(asyncio.create_task(watch_controls()))
                if reload is not None and load is not None:
                    tasks.append(asyncio.create_task(reloads()))
                link_task = asyncio.create_task(link.run(stop))
                tasks.append(link_task)
                tasks.append(asyncio.create_task(link.notifier.watchdog()))
                waits: list[asyncio.Task[Any]] = [link_task, asyncio.create_task(stop.wait())]
                if drain is not None:
                    waits.append(asyncio.create_task(drain.wait()))
                tasks.extend(waits[1:])
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if link_task.done() and link_task.exception() is not None:
                    raise link_task.exception()  # type: ignore[misc]
                if drain is not None and drain.is_set() and not stop.is_set():
                    await _drain(runner, link, heartbeat, agent.drain_timeout)
            finally:
                link.notifier.stopping("stopping")
                stop.set()
                await runner.cancel_all()
                backend.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if managed is not None:
                    await managed.stop()
                probe.close()
                log.info("agent.stopped", served=runner.served)


async def _drain(runner: JobRunner, link: Link, heartbeat: Callable[[], Heartbeat], limit: float) -> None:
    """Say so, take no new jobs, let running ones finish (bounded); the rest are cancelled."""
    runner.draining = True
    log.info("agent.draining", active=runner.active, limit=limit)
    await link.send_quietly(encode(heartbeat()))
    if runner.tasks:
        await asyncio.wait(list(runner.tasks.values()), timeout=limit)
    if runner.active:
        log.warning("agent.drain_timeout", cancelled=runner.active)


def run_agent_forever(config: Config, load: Reload | None = None) -> None:
    """SIGINT (Ctrl-C) stops at once; SIGTERM drains first, as a service manager expects;
    SIGHUP reloads the config through ``load``."""

    async def main() -> None:
        stop, drain, reload = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, drain.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        await run_agent(config, stop, drain, reload, load)

    run_loop(main())
