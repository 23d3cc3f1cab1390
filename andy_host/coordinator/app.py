"""The coordinator's aiohttp application and its run loop (CLI -> Config -> run)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator

import structlog
from aiohttp import WSCloseCode, web

from andy_host.aio import run_loop
from andy_host.config import CoordinatorConfig
from andy_host.coordinator import openai_api
from andy_host.coordinator.admin import add_admin_routes
from andy_host.coordinator.auth import Access
from andy_host.coordinator.dashboard import add_dashboard_routes
from andy_host.coordinator.hostlink import host_websocket
from andy_host.coordinator.hosts import Registry
from andy_host.coordinator.ledger import Ledger
from andy_host.coordinator.metrics import Metrics
from andy_host.coordinator.openapi import openapi_spec
from andy_host.coordinator.relay import Relay
from andy_host.coordinator.scheduler import Scheduler
from andy_host.coordinator.state import (
    ACCESS,
    CONFIG,
    LEDGER,
    METRICS,
    REGISTRY,
    RELAY,
    SCHEDULER,
    STATS,
    STORE,
)
from andy_host.coordinator.stats import PoolStats
from andy_host.coordinator.store import Store
from andy_host.notify import Notifier
from andy_host.protocol import HOSTS_WS_PATH

log = structlog.get_logger("andy_host.coordinator")


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


async def health(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    return web.json_response(
        {
            "status": "ok",
            "hosts": len(registry.hosts),
            "models": len(registry.by_model),
            "queued": request.app[SCHEDULER].queued(),
            "in_flight": sum(len(h.jobs) for h in registry.hosts.values()),
            "stats": request.app[STATS].as_dict(),
        }
    )


async def _sample(metrics: Metrics) -> None:
    while True:
        metrics.sample()
        await asyncio.sleep(1.0)


async def _housekeeping(app: web.Application) -> None:
    """Every flush_interval: write usage and the ledger; disconnect revoked host tokens."""
    config, store, registry = app[CONFIG], app[STORE], app[REGISTRY]
    while True:
        await asyncio.sleep(config.flush_interval)
        try:
            app[ACCESS].flush()
            app[LEDGER].flush(list(registry.hosts.values()))
            revoked = store.revoked_tokens()
            for host in list(registry.hosts.values()):
                if host.token_id is not None and host.token_id in revoked:
                    log.warning("host.token_revoked", host_id=host.id)
                    registry.remove(host, "host token revoked")
                    await host.close(WSCloseCode.POLICY_VIOLATION, "host token revoked")
        except sqlite3.Error as exc:  # a locked database must not stop the loop
            log.warning("housekeeping.db_error", error=str(exc))


def build_app(config: CoordinatorConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=[openai_api.errors_middleware]
    )
    app[CONFIG] = config

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = Store(config.db)
        registry = Registry(store.known_models())
        registry.on_new_models = store.add_models
        app[STORE] = store
        app[REGISTRY] = registry
        app[SCHEDULER] = scheduler = Scheduler(registry, config)
        app[STATS] = stats = PoolStats()
        app[RELAY] = Relay(scheduler, config, stats)
        app[ACCESS] = access = Access(store, config)
        app[LEDGER] = ledger = Ledger(store)
        app[METRICS] = metrics = Metrics(registry, scheduler, stats)
        registry.on_removed = ledger.host_left
        ticker = asyncio.create_task(_housekeeping(app))
        sampler = asyncio.create_task(_sample(metrics))
        yield
        for task in (ticker, sampler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        access.flush()
        ledger.flush(list(registry.hosts.values()))
        store.close()

    async def close_hosts(app: web.Application) -> None:
        for host in list(app[REGISTRY].hosts.values()):
            await host.close(WSCloseCode.SERVICE_RESTART, "coordinator restarting")

    app.cleanup_ctx.append(store_ctx)
    app.on_shutdown.append(close_hosts)
    app.router.add_get("/health", health)
    app.router.add_get(HOSTS_WS_PATH, host_websocket)
    openai_api.add_routes(app)
    add_admin_routes(app)
    add_dashboard_routes(app)
    app.router.add_get("/openapi.json", openapi_document)
    return app


async def serve(
    config: CoordinatorConfig, stop: asyncio.Event, ready: asyncio.Future[str] | None = None
) -> None:
    """Run until ``stop`` is set; logs ``coordinator.listening`` and resolves ``ready`` with the URL."""
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=config.shutdown_grace)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    log.info("coordinator.listening", url=url, api=f"{url}/api/andy/v1")
    notifier = Notifier()
    notifier.ready(f"listening on {url}")
    watchdog = asyncio.create_task(notifier.watchdog())
    status = asyncio.create_task(_status_lines(app, notifier, url))
    if ready is not None:
        ready.set_result(url)
    try:
        await stop.wait()
    finally:
        notifier.stopping("stopping: finishing open requests")
        log.info("coordinator.stopping", grace=config.shutdown_grace)
        await site.stop()  # no new connections; open ones (streams) carry on
        await _wait_in_flight(app, config.shutdown_grace)
        await runner.cleanup()  # then hosts are told 1012 (restarting) and everything closes
        for task in (watchdog, status):
            task.cancel()


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
        jobs = sum(len(h.jobs) for h in registry.hosts.values())
        notifier.status(f"{url}: {len(registry.hosts)} hosts, {len(registry.by_model)} models, {jobs} in flight")


def run_coordinator(config: CoordinatorConfig) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    run_loop(main())
