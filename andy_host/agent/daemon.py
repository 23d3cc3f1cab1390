"""The host daemon: backend, catalog, job runner and link, each loop owned by one TaskGroup.

``Agent.run`` serves until ``stop`` (or, after ``drain``, until running jobs finish).
Every long-running loop (the link, backend polling, the owner's controls, config
reloads, a managed llama-server's supervisor, the systemd watchdog) runs in one
``asyncio.TaskGroup``: a loop that crashes ends the group, and the process exits
non-zero with the error logged, so systemd restarts it. A fatal refusal by the
coordinator ends it with ``EXIT_REFUSED``, which the unit does not restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from andy_host.agent.backends import make_backend
from andy_host.agent.backends.base import Backend
from andy_host.agent.catalog import Catalog
from andy_host.agent.continuation import Continuation, probe_continuation
from andy_host.agent.controls import pause_reasons
from andy_host.agent.hardware import HardwareProbe
from andy_host.agent.identity import host_id, host_secret, save_host_id, save_host_secret, state_dir
from andy_host.agent.jobs import JobRunner
from andy_host.agent.link import Link
from andy_host.agent.managed import ManagedLlamaServer
from andy_host.agent.status import shown_status, socket_path, status_server
from andy_host.aio import run_loop
from andy_host.config import Config
from andy_host.errors import Refused
from andy_host.protocol import EXIT_REFUSED, FEATURE_CONTINUE, Heartbeat, Hello, Models, encode, read_hardware
from andy_host.service.notify import Notifier

log = structlog.get_logger("andy_host.agent")

Reload = Callable[[], Config]
RESTART_ONLY = ("coordinator", "name", "token", "state_dir")
LINK_CLOSE_WAIT = 3.0  # seconds the link may take to say goodbye when stopping


class _Stopped(Exception):
    """Raised inside the task group to end it once the agent is told to stop."""


class Agent:
    def __init__(self, config: Config, load: Reload | None = None) -> None:
        self.config = config
        self.load = load
        agent = config.agent
        self.name = agent.effective_name()
        self.state = state_dir(agent.state_dir)
        self.host_id = host_id(self.state, self.name)
        self.secret = host_secret(self.state, self.name)
        self.notifier = Notifier()
        self.probe = HardwareProbe()
        self.readings: dict[str, Any] = self.probe.sample()
        self.managed = ManagedLlamaServer(config.backend) if config.backend.managed else None
        self.url = self.managed.url if self.managed else config.backend.effective_url()
        self.continuation: Continuation | None = None  # learned once from the backend
        self.backend_features: set[str] = set()  # what else it supports (tools are per model)
        self.backend_version: str | None = None
        self.capacity_changed = False
        self.started = time.time()
        self._ready_sent = False

    def connected(self) -> bool:
        """The link to the coordinator is up (welcomed)."""
        link: Link | None = getattr(self, "link", None)
        return link is not None and link.connected.is_set()

    # what the coordinator is told -----------------------------------------------------

    def features(self) -> list[str]:
        continues = self.continuation is not None and self.continuation.supported
        return sorted(self.backend_features | ({FEATURE_CONTINUE} if continues else set()))

    def hello(self) -> Hello:
        return Hello(
            name=self.name, host_id=self.host_id, token=self.config.agent.token or None, secret=self.secret,
            backend=self.backend.kind, backend_version=self.backend_version, models=self.catalog.models,
            capacity=self.config.agent.max_concurrency, hardware=read_hardware(self.readings),
            jobs=list(self.runner.tasks), features=self.features(),
        )

    def heartbeat(self) -> Heartbeat:
        status, reason, pause = "active", None, [p.code for p in self.runner.paused]
        if not self.catalog.reachable:
            status, reason, pause = "backend_down", self.catalog.error, ["backend_down"]
        if self.runner.paused:
            status, reason = "paused", "; ".join(p.text for p in self.runner.paused)
        if self.runner.draining:
            status, reason, pause = "draining", "host shutting down", ["draining"]
        return Heartbeat(
            active=self.runner.active, status=status, reason=reason, pause=pause,
            loaded=[m.name for m in self.catalog.models if m.loaded],
            capacity=self.config.agent.max_concurrency if self.capacity_changed else None,
            hardware=read_hardware(self.readings), features=self.features(),
        )

    def status(self) -> dict[str, Any]:
        beat = self.heartbeat()
        models = [m.name for m in self.catalog.models]
        shown, reason = shown_status(beat.status, beat.reason, models, self.catalog.withheld, self.catalog.reachable)
        return {
            "name": self.name, "host_id": self.host_id, "pid": os.getpid(),
            "coordinator": self.link.coordinator, "coordinators": self.config.agent.coordinator,
            "connected": self.link.connected.is_set(), "last_error": self.link.last_error,
            "status": shown, "reason": reason, "pause_reasons": [p.text for p in self.runner.paused],
            "jobs_in_flight": self.runner.active, "served": self.runner.served, "tokens": self.runner.tokens,
            "backend": {"kind": self.backend.kind, "url": self.url, "reachable": self.catalog.reachable,
                        "error": self.catalog.error, "models": models,
                        "continuation": None if self.continuation is None else {
                            "supported": self.continuation.supported, "echoes": self.continuation.echoes}},
            "hardware": self.readings, "uptime": time.time() - self.started,
            "withheld_models": self.catalog.withheld,
        }

    # the daemon ---------------------------------------------------------------------

    def _build(self, session: aiohttp.ClientSession) -> None:
        self.backend: Backend = make_backend(self.config.backend, session, self.url)
        self.catalog = Catalog(self.backend, self.config.controls)
        self.runner = JobRunner(self.backend, self.catalog, self.config.agent.max_concurrency)
        self.link = Link(self.config.agent, self.hello, self.heartbeat, self.runner, self._link_state)
        self.link.issued = self._keep_secret
        self.link.assigned = self._keep_id

    def _keep_id(self, new_id: str) -> None:
        """The coordinator gave this host a new id (its old one could not be proven)."""
        log.warning("agent.new_host_id", old=self.host_id, new=new_id)
        self.host_id = new_id
        save_host_id(self.state, self.name, new_id)
        structlog.contextvars.bind_contextvars(host_id=new_id)

    def _keep_secret(self, secret: str) -> None:
        self.secret = secret
        save_host_secret(self.state, self.name, secret)

    def _link_state(self, line: str) -> None:
        if line.startswith("connected") and not self._ready_sent:
            self.notifier.ready(line)
            self._ready_sent = True
        else:
            self.notifier.status(line)

    async def run(self, stop: asyncio.Event, drain: asyncio.Event | None = None,
                  reload: asyncio.Event | None = None) -> None:
        """Serve until ``stop``; on ``drain``, finish running jobs (up to drain_timeout)
        first; on ``reload``, apply the config ``load`` returns (an invalid one is rejected)."""
        structlog.contextvars.bind_contextvars(host_id=self.host_id)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            self._build(session)
            log.info("agent.starting", name=self.name, coordinator=self.config.agent.coordinator,
                     backend=self.backend.kind, url=self.url)
            async with status_server(socket_path(self.state, self.name), self.status):
                try:
                    await self._start_backend()
                    await self._serve(stop, drain, reload)
                finally:
                    await self._shutdown(stop)

    async def _start_backend(self) -> None:
        if self.managed is not None:
            await self.managed.start()
        await self.catalog.refresh()
        await self._learn_continuation()
        self.backend_version = await self.backend.version()

    async def _serve(self, stop: asyncio.Event, drain: asyncio.Event | None, reload: asyncio.Event | None) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                link = group.create_task(self.link.run(stop), name="link")
                group.create_task(self._poll_backend(), name="poll-backend")
                group.create_task(self._watch_controls(), name="controls")
                group.create_task(self.notifier.watchdog(), name="watchdog")
                if reload is not None and self.load is not None:
                    group.create_task(self._reloads(reload), name="reloads")
                if self.managed is not None:
                    group.create_task(self.managed.supervise(self._on_backend_change), name="llama-server")
                group.create_task(self._lifetime(stop, drain, link), name="lifetime")
        except* _Stopped:
            pass
        except* Refused as group_error:
            raise group_error.exceptions[0] from None

    async def _lifetime(self, stop: asyncio.Event, drain: asyncio.Event | None, link: asyncio.Task[None]) -> None:
        """Wait for stop or drain; drain if asked; let the link say goodbye; end the group."""
        waits = [asyncio.ensure_future(stop.wait())]
        if drain is not None:
            waits.append(asyncio.ensure_future(drain.wait()))
        try:
            await asyncio.wait([*waits, link], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if link.done() and not link.cancelled() and link.exception() is not None:
            return  # the link failed by itself: its error (a refusal) ends the group
        # otherwise end the group ourselves, also when the link saw ``stop`` first and
        # ended cleanly before this task woke up (the other loops never end by themselves)
        if drain is not None and drain.is_set() and not stop.is_set():
            await self._drain()
        stop.set()
        await asyncio.wait([link], timeout=LINK_CLOSE_WAIT)
        raise _Stopped

    async def _shutdown(self, stop: asyncio.Event) -> None:
        self.notifier.stopping("stopping")
        stop.set()
        await self.runner.cancel_all()
        if self.managed is not None:
            await self.managed.stop()
        self.probe.close()
        log.info("agent.stopped", served=self.runner.served)

    async def _drain(self) -> None:
        """Say so, take no new jobs, let running ones finish (bounded); the rest are cancelled."""
        limit = self.config.agent.drain_timeout
        self.runner.draining = True
        log.info("agent.draining", active=self.runner.active, limit=limit)
        await self.link.send_quietly(encode(self.heartbeat()))
        if self.runner.tasks:
            await asyncio.wait(list(self.runner.tasks.values()), timeout=limit)
        if self.runner.active:
            log.warning("agent.drain_timeout", cancelled=self.runner.active)

    # loops ---------------------------------------------------------------------------

    async def _learn_continuation(self) -> None:
        if self.catalog.reachable:
            self.backend_features = await self.backend.features()
        if self.continuation is None and self.catalog.reachable:
            targets = [(self.catalog.backend_ids[m.name], m) for m in self.catalog.models]
            self.continuation = await probe_continuation(self.backend, targets)
            self.runner.echoes = self.continuation is not None and self.continuation.echoes

    async def _on_backend_change(self) -> None:
        if await self.catalog.refresh():
            await self._learn_continuation()
            await self.link.send_quietly(encode(Models(models=self.catalog.models)))
            await self.link.send_quietly(encode(self.heartbeat()))

    async def _poll_backend(self) -> None:
        while True:
            await asyncio.sleep(self.config.backend.poll_interval)
            await self._on_backend_change()

    async def _watch_controls(self) -> None:
        """Sample the hardware and apply the owner's controls every check_interval."""
        while True:
            self.readings = self.probe.sample()
            reasons = pause_reasons(self.config.controls, self.readings)
            if reasons != self.runner.paused:
                log.info("controls.paused" if reasons else "controls.resumed", reasons=[r.text for r in reasons])
                self.runner.paused = reasons
                await self.link.send_quietly(encode(self.heartbeat()))
            await asyncio.sleep(self.config.controls.check_interval)

    async def _reloads(self, reload: asyncio.Event) -> None:
        assert self.load is not None
        while True:
            await reload.wait()
            reload.clear()
            try:
                new = self.load()
            except Exception as exc:  # ConfigError or an unreadable file: keep the old one
                log.error("config.reload_rejected", error=str(exc))
                continue
            await self._apply(new)

    async def _apply(self, new: Config) -> None:
        agent, config = self.config.agent, self.config
        for key in RESTART_ONLY:
            if getattr(new.agent, key) != getattr(agent, key):
                log.warning("config.needs_restart", option=f"agent.{key}")
        if (new.backend.kind, new.backend.url) != (config.backend.kind, config.backend.url):
            log.warning("config.needs_restart", option="backend.kind/url")
        if new.agent.max_concurrency != agent.max_concurrency:
            agent.max_concurrency = new.agent.max_concurrency
            self.runner.resize(new.agent.max_concurrency)
            self.capacity_changed = True
        for key in ("heartbeat_interval", "reconnect_min", "reconnect_max", "drain_timeout"):
            setattr(agent, key, getattr(new.agent, key))
        config.controls = self.catalog.controls = new.controls
        await self._on_backend_change()  # the shared models may have changed
        config.backend.poll_interval = new.backend.poll_interval
        log.info("config.reloaded", max_concurrency=agent.max_concurrency)
        await self.link.send_quietly(encode(self.heartbeat()))


async def run_agent(
    config: Config,
    stop: asyncio.Event,
    drain: asyncio.Event | None = None,
    reload: asyncio.Event | None = None,
    load: Reload | None = None,
) -> None:
    """Run one agent until ``stop`` (see :class:`Agent`)."""
    await Agent(config, load).run(stop, drain, reload)


def run_agent_forever(config: Config, load: Reload | None = None) -> int:
    """SIGINT (Ctrl-C) stops at once; SIGTERM drains first, as a service manager expects;
    SIGHUP reloads the config through ``load``. Returns the exit status."""

    async def main() -> None:
        stop, drain, reload = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, drain.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        await run_agent(config, stop, drain, reload, load)

    try:
        run_loop(main())
    except Refused as exc:
        log.error("agent.refused", code=exc.code, reason=exc.reason)
        print(f"andy-host: {exc}; not retrying", file=sys.stderr)
        return EXIT_REFUSED
    except BaseExceptionGroup as group:  # a loop crashed: say which, then exit non-zero
        for error in group.exceptions:
            log.error("agent.crashed", error=f"{type(error).__name__}: {error}", exc_info=error)
        return 1
    return 0
