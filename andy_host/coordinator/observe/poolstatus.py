"""``GET /api/andy/pool_status``: the pool's totals and models for anyone (what the
dashboard shows), and its hosts for key holders; with the admin token each host's
escrow too (what it has held for answer checks, credited and voided: escrow.py)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from andy_host.coordinator.access.limits import limited
from andy_host.coordinator.admin.api import has_admin_token
from andy_host.coordinator.hosts.registry import REGISTRY, Host
from andy_host.coordinator.observe.dashboard import pause_words
from andy_host.coordinator.observe.stats import STATS
from andy_host.coordinator.pool.capacity import model_rows, pool_totals, serving
from andy_host.coordinator.pool.scheduler import SCHEDULER
from andy_host.coordinator.replication.federation import with_peers
from andy_host.coordinator.trust.escrow import figures
from andy_host.coordinator.web.context import context
from andy_host.coordinator.web.json import json_response


@limited("pool_status")
async def pool_status(request: web.Request) -> web.Response:
    """Totals and models; with a key (or where keys are not required) the hosts too:
    host names only, never ids, addresses or tokens, and no text a host wrote other than
    names (pause reasons in the coordinator's words). The admin API lists ids. With the
    admin token (``Authorization: Bearer <admin_token>``) the hosts and each one's
    ``escrow``. Capacity counts the hosts able to serve, as the dashboard does
    (capacity.py)."""
    registry, scheduler = request.app[REGISTRY], request.app[SCHEDULER]
    totals = with_peers(request.app, pool_totals(registry, scheduler), registry)
    hosts = list(registry.hosts.values())
    public = {
        "total_hosts": totals["hosts"],
        "active_hosts": totals["serving_hosts"],
        "capacity": totals["capacity"],
        "total_models": totals["models"],
        "in_flight": totals["in_flight"],
        "queued": totals["queued"],
        "load": round(totals["in_flight"] / totals["capacity"], 3) if totals["capacity"] else 0.0,
        "replicas": totals.get("replicas", 1),  # the counts above are the pool's; hosts below, this replica's
        "tokens_per_second": round(sum((h.health.tps or 0.0) * len(h.jobs) for h in hosts), 1),
        "models": model_rows(registry, scheduler),
    }
    admin = has_admin_token(request)  # the admin sees the hosts, with their escrow, key or not
    if context(request).keyless and not admin:
        return json_response(public)
    return json_response({**public, "stats": request.app[STATS].as_dict(), "hosts": _host_rows(hosts, admin)})


def _host_rows(hosts: list[Host], admin: bool = False) -> list[dict[str, Any]]:
    """Each host's row; ``admin``: with its escrow (held, credited, voided), which no
    key holder sees (a host sees its own at /api/andy/hosts/{host_id}/credit)."""
    now, monotonic = time.time(), time.monotonic()
    rows: list[dict[str, Any]] = [
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
    ]
    if admin:
        for row, h in zip(rows, hosts, strict=True):
            row["escrow"] = figures(h.escrow)
    return rows
