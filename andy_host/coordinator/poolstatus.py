"""``GET /api/andy/pool_status``: totals, hosts and models, for key holders."""

from __future__ import annotations

import time

from aiohttp import web

from andy_host.coordinator.httputil import json_response
from andy_host.coordinator.limits import limited
from andy_host.coordinator.state import REGISTRY, SCHEDULER, STATS


@limited("pool_status")
async def pool_status(request: web.Request) -> web.Response:
    """Totals, hosts and models; host names only, never addresses or tokens."""
    registry, scheduler = request.app[REGISTRY], request.app[SCHEDULER]
    now = time.time()
    hosts = list(registry.hosts.values())
    in_flight = sum(len(h.jobs) for h in hosts)
    return json_response(
        {
            "total_hosts": len(hosts),
            "active_hosts": sum(1 for h in hosts if h.status == "active"),
            "total_models": len(registry.by_model),
            "in_flight": in_flight,
            "queued": scheduler.queued(),
            "tokens_per_second": round(sum((h.health.tps or 0.0) * len(h.jobs) for h in hosts), 1),
            "stats": request.app[STATS].as_dict(),
            "hosts": [
                {
                    "id": h.id,
                    "name": h.name,
                    "status": "busy" if h.status == "active" and h.free <= 0 else h.status,
                    "reason": h.reason,
                    "backend": h.backend,
                    "models": sorted(h.models),
                    "loaded": sorted(h.loaded),
                    "load": len(h.jobs),
                    "capacity": h.capacity,
                    "tokens_per_second": h.health.tps,
                    "time_to_first_token": h.health.ttft,
                    "uptime": round(now - h.connected_at, 1),
                    "served": h.served,
                    "tokens": h.tokens,
                    "failures": h.failures,
                }
                for h in hosts
            ],
            "models": [
                {
                    "name": name,
                    "hosts": len(members),
                    "capacity": sum(h.capacity for h in members),
                    "queue": scheduler.queued(name),
                }
                for name, members in sorted(registry.by_model.items())
            ],
        }
    )
