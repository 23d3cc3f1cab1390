"""The coordinator's aiohttp application and its run loop (CLI -> Config -> run)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import WSCloseCode, web

from andy_host.aio import run_loop
from andy_host.config import CoordinatorConfig
from andy_host.coordinator.access.auth import ACCESS, Access
from andy_host.coordinator.access.ratelimit import SlidingWindow
from andy_host.coordinator.admin.api import add_admin_routes
from andy_host.coordinator.admin.moderation import MODERATION, Moderation
from andy_host.coordinator.api import ollama as ollama_api
from andy_host.coordinator.api import openai as openai_api
from andy_host.coordinator.api import responses as responses_api
from andy_host.coordinator.api.openapi import openapi_spec
from andy_host.coordinator.hosts.admission import GATE, NEW_HOSTS, Gate
from andy_host.coordinator.hosts.enrolment import KICKS, Kicks
from andy_host.coordinator.hosts.link import drop_frozen, host_websocket
from andy_host.coordinator.hosts.registry import REGISTRY, Host, Registry
from andy_host.coordinator.observe.dashboard import add_dashboard_routes
from andy_host.coordinator.observe.metrics import METRICS, Metrics
from andy_host.coordinator.observe.stats import STATS, PoolStats
from andy_host.coordinator.pool.relay import Relay
from andy_host.coordinator.pool.scheduler import SCHEDULER, Scheduler
from andy_host.coordinator.replication import wiring as replicated
from andy_host.coordinator.replication.endpoint import add_replica_routes
from andy_host.coordinator.replication.federation import FEDERATION, advertise, start_federation
from andy_host.coordinator.runtime import startup
from andy_host.coordinator.runtime.periodic import PERIODIC, Periodic, Tick
from andy_host.coordinator.runtime.state import RELAY, STORE
from andy_host.coordinator.store.interface import open_store
from andy_host.coordinator.trust.checks import CHECKER, Checker
from andy_host.coordinator.trust.ledger import LEDGER, Ledger
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.cors import add_cors_headers, cors
from andy_host.coordinator.web.json import errors_middleware
from andy_host.coordinator.web.requestids import add_request_id, request_ids
from andy_host.errors import ListenError
from andy_host.protocol import CLOSE_TOKEN_REFUSED, HOSTS_WS_PATH
from andy_host.service.notify import Notifier

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
            "in_flight": registry.in_flight(),
            "stats": request.app[STATS].as_dict(),
            **({"replica": request.app[FEDERATION].summary()} if FEDERATION in request.app else {}),
        }
    )


async def _flush(app: web.Application) -> None:
    """Write what is kept in memory: usage, the ledger, standings, model names."""
    store, registry = app[STORE], app[REGISTRY]
    await app[ACCESS].flush()
    await app[LEDGER].flush(list(registry.hosts.values()))
    await app[CHECKER].flush()
    new, gone = registry.drain_names()
    if new or gone:
        await store.change_models(new, gone)


def _housekeeping(app: web.Application) -> Tick:
    """Flush, and disconnect hosts whose token was revoked."""
    async def tick() -> None:
        await _flush(app)
        registry = app[REGISTRY]
        revoked = await app[STORE].revoked_tokens()
        for host in list(registry.hosts.values()):
            if host.token_id is not None and host.token_id in revoked:
                log.warning("host.token_revoked", host_id=host.id)
                registry.remove(host, "host token revoked")
                await host.close(CLOSE_TOKEN_REFUSED, "host token revoked")

    return tick


def _forget_models(app: web.Application) -> Tick:
    """Forget model names no host has served for known_model_ttl (and the excess)."""
    async def tick() -> None:
        registry = app[REGISTRY]
        registry.forget(time.time(), app[CONFIG].known_model_ttl)
        _, gone = registry.drain_names()
        await app[STORE].touch_models({n: registry.known[n] for n in registry.by_model}, gone)

    return tick


async def _services(app: web.Application, config: CoordinatorConfig) -> None:
    """The coordinator's parts, each with the parts it needs."""
    app[STORE] = store = await open_store(config.db, config.database_url, pool_size=config.database_pool_size,
                                               connect_timeout=config.database_timeout)
    if config.database_url:  # PostgreSQL restarting must not stop the replica's periodic work
        from andy_host.coordinator.store.postgres import UNAVAILABLE

        app[PERIODIC].tolerate(*UNAVAILABLE)
    app[REGISTRY] = registry = Registry(await store.known_models(), config.max_models_per_host,
                                        config.max_known_models, config.max_job_buffer_chars)
    app[SCHEDULER] = scheduler = Scheduler(registry, config)
    app[STATS] = stats = PoolStats()
    app[RELAY] = relay = Relay(scheduler, config, stats)
    app[ACCESS] = Access(store, config)
    app[LEDGER] = ledger = Ledger(store)
    app[METRICS] = metrics = Metrics(registry, scheduler, stats, config.metrics_max_hosts,
                                     config.metrics_max_models)
    app[CHECKER] = checker = Checker(registry, scheduler, relay, config, store, stats)
    relay.observer = checker
    app[MODERATION] = moderation = Moderation(store, registry, checker, app[KICKS], config.kick_seconds)
    await moderation.start()
    await replicated.start(app, config)  # only with redis_url: shared limits and changes

    def left(host: Host) -> None:
        ledger.host_left(host)
        metrics.host_left(host)
        checker.left(host)

    registry.on_removed = left
    if config.redis_url:  # replicated mode: the host directory, and jobs across replicas
        federation = await start_federation(app, config, relay, registry)
        app[PERIODIC].every("directory-publish", config.directory_interval, federation.publish)
        app[PERIODIC].every("directory-read", config.directory_interval, federation.refresh)


def _schedule(app: web.Application, config: CoordinatorConfig) -> None:
    """The periodic work, under its one owner."""
    periodic, registry, metrics = app[PERIODIC], app[REGISTRY], app[METRICS]

    async def sample() -> None:
        metrics.history.sample()

    async def sweep() -> None:
        await drop_frozen(registry, config.busy_host_timeout)

    periodic.every("housekeeping", config.flush_interval, _housekeeping(app))
    periodic.every("metrics-sample", 1.0, sample)
    periodic.every("frozen-hosts", min(0.25, config.busy_host_timeout / 4), sweep)
    periodic.every("forget-models", 60.0, _forget_models(app))
    periodic.every("admin-actions", config.flush_interval, app[MODERATION].poll)
    periodic.every("recheck-quarantined", config.quarantine_check_interval, app[CHECKER].recheck_quarantined)


def build_app(config: CoordinatorConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[request_ids, cors, errors_middleware])
    app[CONFIG] = config
    app[GATE] = Gate(config.max_connecting, config.max_connecting_per_address, config.admission_queue)
    app[KICKS] = Kicks()
    app[NEW_HOSTS] = SlidingWindow(3600.0)
    app[PERIODIC] = periodic = Periodic()

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        await _services(app, config)
        _schedule(app, config)
        periodic.start()
        yield
        await periodic.stop()
        await app[CHECKER].close()
        await app[RELAY].close()
        if FEDERATION in app:
            await app[FEDERATION].close()
        await _flush(app)
        await replicated.stop(app)
        await app[STORE].close()

    async def close_hosts(app: web.Application) -> None:
        for host in list(app[REGISTRY].hosts.values()):
            await host.close(WSCloseCode.SERVICE_RESTART, "coordinator restarting")

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(close_hosts)
    app.router.add_get("/health", health)
    app.router.add_get(HOSTS_WS_PATH, host_websocket)
    openai_api.add_routes(app)
    responses_api.add_routes(app)
    ollama_api.add_routes(app)
    app.on_response_prepare.extend([add_request_id, add_cors_headers])
    add_admin_routes(app)
    add_dashboard_routes(app)
    add_replica_routes(app)
    app.router.add_get("/openapi.json", openapi_document)
    return app


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
