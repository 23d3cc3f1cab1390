"""Replicated mode's wiring: with ``coordinator.redis_url`` set, the replica opens a
Redis client (``app[REDIS]``), counts limits in Redis (``redis_limits``), and
subscribes to the changes channel (``redis_state.Changes``, ``app[CHANGES]``), whose
receiving loop runs under the app's :class:`~andy_host.coordinator.runtime.periodic.Periodic`.
Without it none of this exists (the redis package is not even imported) and the
coordinator is the single process it always was.
"""

from __future__ import annotations

from typing import Protocol

import structlog
from aiohttp import web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.access.auth import ACCESS
from andy_host.coordinator.admin.moderation import MODERATION
from andy_host.coordinator.runtime.periodic import PERIODIC
from andy_host.coordinator.store.interface import STORE

log = structlog.get_logger("andy_host.replicated")

EVENTS = "events"  # a change kind: new admin events in the store


class Closing(Protocol):
    async def aclose(self) -> None: ...


class Announcing(Protocol):
    async def publish(self, kind: str) -> None: ...
    async def close(self) -> None: ...


REDIS = web.AppKey("redis", Closing)  # a redis.asyncio.Redis
CHANGES = web.AppKey("changes", Announcing)  # a redis_state.Changes


async def start(app: web.Application, config: CoordinatorConfig) -> None:
    """Connect to Redis and put the shared parts in place (before the periodic work starts)."""
    if not config.redis_url:
        return
    from andy_host.coordinator.access.redis_limits import RedisMeter
    from andy_host.coordinator.replication.broadcast import Changes, connect

    client = await connect(config.redis_url, config.redis_timeout)
    app[REDIS] = client
    app[ACCESS].meter = RedisMeter(client, app[STORE], config.rate_window, config.redis_retry)
    changes = Changes(client, {EVENTS: app[MODERATION].poll}, retry=config.redis_timeout)
    app[CHANGES] = changes
    app[PERIODIC].every("changes", 0.001, changes.tick)
    log.info("replicated.connected", redis=_safe(config.redis_url))


async def announce(app: web.Application, kind: str = EVENTS) -> None:
    """Tell every replica about a change this one made (nothing to do without Redis)."""
    changes = app.get(CHANGES)
    if changes is not None:
        await changes.publish(kind)


async def stop(app: web.Application) -> None:
    changes, client = app.get(CHANGES), app.get(REDIS)
    if changes is not None:
        await changes.close()
    if client is not None:
        await client.aclose()


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url
