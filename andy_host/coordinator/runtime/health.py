"""``GET /health`` and ``GET /openapi.json``: is this coordinator up, and what it serves."""


from __future__ import annotations

import structlog
from aiohttp import web

from andy_host.coordinator.api.openapi import openapi_spec
from andy_host.coordinator.hosts.registry import REGISTRY
from andy_host.coordinator.observe.stats import STATS
from andy_host.coordinator.pool.scheduler import SCHEDULER
from andy_host.coordinator.replication.federation import FEDERATION

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

