"""The coordinator's periodic housekeeping: what is kept in memory written behind, hosts
whose token was revoked disconnected, model names no host serves any more forgotten."""


from __future__ import annotations

import time

import structlog
from aiohttp import web

from andy_host.coordinator.access.auth import ACCESS
from andy_host.coordinator.hosts.registry import REGISTRY
from andy_host.coordinator.runtime.periodic import Tick
from andy_host.coordinator.store.interface import STORE
from andy_host.coordinator.trust.checks import CHECKER
from andy_host.coordinator.trust.ledger import LEDGER
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.protocol import CLOSE_TOKEN_REFUSED

log = structlog.get_logger("andy_host.coordinator")


async def flush_memory(app: web.Application) -> None:
    """Write what is kept in memory: usage, the ledger, standings, model names."""
    store, registry = app[STORE], app[REGISTRY]
    await app[ACCESS].flush()
    await app[LEDGER].flush(list(registry.hosts.values()))
    await app[CHECKER].flush()
    new, gone = registry.drain_names()
    if new or gone:
        await store.change_models(new, gone)


def housekeeping(app: web.Application) -> Tick:
    """Flush, and disconnect hosts whose token was revoked."""
    async def tick() -> None:
        await flush_memory(app)
        registry = app[REGISTRY]
        revoked = await app[STORE].revoked_tokens()
        for host in list(registry.hosts.values()):
            if host.token_id is not None and host.token_id in revoked:
                log.warning("host.token_revoked", host_id=host.id)
                registry.remove(host, "host token revoked")
                await host.close(CLOSE_TOKEN_REFUSED, "host token revoked")

    return tick


def forget_models(app: web.Application) -> Tick:
    """Forget model names no host has served for known_model_ttl (and the excess)."""
    async def tick() -> None:
        registry = app[REGISTRY]
        registry.forget(time.time(), app[CONFIG].known_model_ttl)
        _, gone = registry.drain_names()
        await app[STORE].touch_models({n: registry.known[n] for n in registry.by_model}, gone)

    return tick

