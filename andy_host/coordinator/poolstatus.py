"""``GET /api/andy/pool_status``: totals, hosts and models, for key holders."""

from __future__ import annotations

import time

from aiohttp import web

from andy_host.coordinator.capacity import model_rows, pool_totals, serving
from andy_host.coordinator.dashboard import pause_words
from andy_host.coordinator.federation import with_peers
from andy_host.coordinator.httputil import json_response
from andy_host.coordinator.limits import limited
from andy_host.coordinator.state import REGISTRY, SCHEDULER, STATS


@limited("pool_status")
async def pool_status(request: web.Request) -> web.Response:
    """Totals, hosts and models; host names only, never ids, addresses or tokens, and no
    text a host wrote other than names (pause reasons in the coordinator's words). The
    admin API lists ids. Capacity counts the hosts able to serve, as the dashboard does
    (capacity.py)."""
    registry, scheduler = request.app[REGISTRY], request.app[SCHEDULER]
    now, monotonic = time.time(), time.monotonic()
    hosts = list(registry.hosts.values())
    totals = with_peers(request.app, pool_totals(registry, scheduler), registry)
    return json_response(
        {
            "total_hosts": totals["hosts"],
            "active_hosts": totals["serving_hosts"],
            "capacity": totals["capacity"],
            "total_models": totals["models"],
            "in_flight": totals["in_flight"],
            "queued": totals["queued"],
            "replicas": totals.get("replicas", 1),  # the counts above are the pool's; hosts below, this replica's
            "tokens_per_second": round(sum((h.health.tps or 0.0) * len(h.jobs) for h in hosts), 1),
            "stats": request.app[STATS].as_dict(),
            "hosts": [
                {
                    "name": h.name,
                    "status": h.shown_status,
                    "serving": serving(h, monotonic),
                    "pause": pause_words(h, monotonic),
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
            "models": model_rows(registry, scheduler),
        }
    )
