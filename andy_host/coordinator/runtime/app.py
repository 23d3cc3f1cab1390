"""The coordinator's aiohttp application: its parts, built once with what each needs,
its routes and its periodic work (the run loop is ``runtime.serve``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import WSCloseCode, web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.access.auth import ACCESS, Access
from andy_host.coordinator.access.ratelimit import SlidingWindow
from andy_host.coordinator.admin.api import add_admin_routes
from andy_host.coordinator.admin.moderation import MODERATION, Moderation
from andy_host.coordinator.api import ollama as ollama_api
from andy_host.coordinator.api import openai as openai_api
from andy_host.coordinator.api import responses as responses_api
from andy_host.coordinator.hosts.admission import GATE, NEW_HOSTS, Gate
from andy_host.coordinator.hosts.enrolment import KICKS, Kicks
from andy_host.coordinator.hosts.link import drop_frozen, host_websocket
from andy_host.coordinator.hosts.registry import REGISTRY, Host, Registry
from andy_host.coordinator.observe.dashboard import add_dashboard_routes
from andy_host.coordinator.observe.metrics import METRICS, Metrics
from andy_host.coordinator.observe.prometheus import add_metrics_routes
from andy_host.coordinator.observe.stats import STATS, PoolStats
from andy_host.coordinator.pool.relay import RELAY, Relay
from andy_host.coordinator.pool.scheduler import SCHEDULER, Scheduler
from andy_host.coordinator.replication import wiring as replicated
from andy_host.coordinator.replication.endpoint import add_replica_routes
from andy_host.coordinator.replication.federation import FEDERATION, start_federation
from andy_host.coordinator.runtime.health import health, openapi_document
from andy_host.coordinator.runtime.housekeeping import flush_memory, forget_models, housekeeping
from andy_host.coordinator.runtime.periodic import PERIODIC, Periodic
from andy_host.coordinator.store.interface import STORE, open_store
from andy_host.coordinator.trust.checks import CHECKER, Checker
from andy_host.coordinator.trust.ledger import LEDGER, Ledger
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.cors import add_cors_headers, cors
from andy_host.coordinator.web.json import errors_middleware
from andy_host.coordinator.web.requestids import add_request_id, request_ids
from andy_host.protocol import HOSTS_WS_PATH

log = structlog.get_logger("andy_host.coordinator")


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

    periodic.every("housekeeping", config.flush_interval, housekeeping(app))
    periodic.every("metrics-sample", 1.0, sample)
    periodic.every("frozen-hosts", min(0.25, config.busy_host_timeout / 4), sweep)
    periodic.every("forget-models", 60.0, forget_models(app))
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
        await flush_memory(app)
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
    add_metrics_routes(app)
    add_replica_routes(app)
    app.router.add_get("/openapi.json", openapi_document)
    return app


