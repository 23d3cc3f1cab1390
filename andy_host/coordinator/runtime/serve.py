"""The coordinator's run loop: listen, tell the operator and systemd, serve until told
to stop (or a periodic task fails), then finish open requests within the grace period."""


from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from andy_host.aio import run_loop
from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts.registry import REGISTRY
from andy_host.coordinator.replication.federation import advertise
from andy_host.coordinator.runtime import startup
from andy_host.coordinator.runtime.app import build_app
from andy_host.coordinator.runtime.periodic import PERIODIC
from andy_host.errors import ListenError
from andy_host.service.notify import Notifier

log = structlog.get_logger("andy_host.coordinator")


async def serve(
    config: CoordinatorConfig, stop: asyncio.Event, ready: asyncio.Future[str] | None = None
) -> None:
    """Run until ``stop`` is set; logs ``coordinator.listening`` and resolves ``ready`` with the URL."""
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=config.shutdown_grace,
                           keepalive_timeout=config.http_idle_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:  # a port in use, a port that needs root, not our address
        await runner.cleanup()
        raise ListenError(startup.listen_problem(config.host, config.port, exc)) from None
    host, port = runner.addresses[0][:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    log.info("coordinator.listening", url=url, api=f"{url}/api/andy/v1")
    notifier = Notifier()
    notifier.ready(f"listening on {url}")
    watchdog = asyncio.create_task(notifier.watchdog())
    status = asyncio.create_task(_status_lines(app, notifier, url))
    advertise(app, url)
    if ready is not None:
        ready.set_result(url)
    failed = app[PERIODIC].failed
    try:
        await asyncio.wait([asyncio.ensure_future(stop.wait()), asyncio.ensure_future(failed.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        notifier.stopping("stopping: finishing open requests")
        log.info("coordinator.stopping", grace=config.shutdown_grace)
        await site.stop()  # no new connections; open ones (streams) carry on
        await _wait_in_flight(app, config.shutdown_grace)
        await runner.cleanup()  # then hosts are told 1012 (restarting) and everything closes
        for task in (watchdog, status):
            task.cancel()
        await asyncio.gather(watchdog, status, return_exceptions=True)
    if failed.is_set():
        raise SystemExit(f"andy-host coordinator: a periodic task crashed ({app[PERIODIC].error}); exiting")


async def _wait_in_flight(app: web.Application, grace: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    registry = app[REGISTRY]
    # polled: runs once, at shutdown, bounded by the grace period
    while loop.time() < deadline and any(h.jobs for h in registry.hosts.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _status_lines(app: web.Application, notifier: Notifier, url: str) -> None:
    if not notifier.enabled:
        return
    while True:
        await asyncio.sleep(5)
        registry = app[REGISTRY]
        jobs = registry.in_flight()
        notifier.status(f"{url}: {len(registry.hosts)} hosts, {len(registry.by_model)} models, {jobs} in flight")


def run_coordinator(config: CoordinatorConfig) -> None:
    """Serve until SIGINT or SIGTERM; once listening, print the start-up summary (stdout)
    and log it (``coordinator.summary``). Raises :class:`ListenError` when it cannot listen."""

    def announce(ready: asyncio.Future[str]) -> None:
        if ready.cancelled() or ready.exception() is not None:
            return
        facts = startup.facts(config, ready.result())
        print(startup.render(facts), flush=True)
        log.info("coordinator.summary", **facts)
        if facts["database_in_memory"]:
            log.warning("coordinator.database_in_memory",
                        hint="keys, tokens and the ledger are lost at exit; pass --db FILE (coordinator.db)")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready: asyncio.Future[str] = loop.create_future()
        ready.add_done_callback(announce)
        await serve(config, stop, ready)

    run_loop(main())

