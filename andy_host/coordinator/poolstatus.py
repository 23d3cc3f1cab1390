"""``GET /api/andy/pool_status``: totals, hosts and models, for key holders."""

from __future__ import annotations

import time

from aiohttp import web

from andy_host.coordinator.dashboard import pause_words
from andy_host.coordinator.httputil import json_response
from andy_host.coordinator.limits import limited
from andy_host.coordinator.state import REGISTRY, SCHEDULER, STATS


@limited("pool_status")
async def pool_status(request: web.Request) -> web.Response:
    """Totals, hosts and models; host names only, never ids, addresses or tokens, and no
    text a host wrote other than names (pause reasons in the coordinator's words). The
    admin API lists ids."""
    registry, scheduler = request.app[REGISTRY], request.app[SCHEDULER]
    now = time.time()
    hosts = list(registry.hosts.values())
    in_flight = registry.in_flight()
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
                    "name": h.name,
                    "status": h.shown_status,
                    "pause": pause_words(h),
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
                    "trusted": h.trusted,
                    "quarantined": h.trust.quarantined,
                    "suspicion": h.trust.score,
                    "strikes": h.trust.strikes,
                    "checks_passed": h.trust.checks_passed,
                    "checks_failed": h.trust.checks_failed,
                }
                for h in hosts
            ],
            "models": [
                {
                    "name": name,
                    "hosts": len(members),
                    "capacity": sum(h.capacity for h in members if h.status == "active"),
                    "queue": scheduler.queued(name),
                }
                for name, members in sorted(registry.by_model.items())
            ],
        }
    )
