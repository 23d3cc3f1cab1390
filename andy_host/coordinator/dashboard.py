"""What people and operators see: the live dashboard at ``/``, its public JSON feed,
and ``/metrics`` for Prometheus.

The public view holds aggregates and host names only: no host ids, addresses, keys
or tokens. Who may read ``/metrics`` is ``coordinator.metrics_access``: public,
admin (the admin token) or off.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from aiohttp import web

from andy_host.coordinator.admin import has_admin_token
from andy_host.coordinator.state import CONFIG, METRICS, REGISTRY, SCHEDULER, STATS
from andy_host.errors import APIError


def _gpus(hardware: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for gpu in hardware.get("gpus", []) if isinstance(hardware, dict) else []:
        if isinstance(gpu, dict):
            out.append({k: gpu.get(k) for k in ("name", "memory_used", "memory_total", "utilization_gpu",
                                                 "temperature", "error")})
    return out


async def dashboard_page(request: web.Request) -> web.Response:
    html = resources.files("andy_host.coordinator").joinpath("static/dashboard.html").read_text()
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def dashboard_data(request: web.Request) -> web.Response:
    registry, scheduler = request.app[REGISTRY], request.app[SCHEDULER]
    hosts = sorted(registry.hosts.values(), key=lambda h: h.name)
    now = time.time()
    rates = request.app[METRICS].rates()
    return web.json_response({
        "time": now,
        "totals": {
            "hosts": len(hosts),
            "active_hosts": sum(1 for h in hosts if h.status == "active"),
            "models": len(registry.by_model),
            "in_flight": sum(len(h.jobs) for h in hosts),
            "queued": scheduler.queued(),
            "capacity": sum(h.capacity for h in hosts),
            "completed": request.app[STATS].completed,
            "rescued": request.app[STATS].rescued,
        },
        "hosts": [
            {
                "name": h.name,
                "status": "busy" if h.status == "active" and h.free <= 0 else h.status,
                "reason": h.reason,
                "models": sorted(h.models),
                "load": len(h.jobs),
                "capacity": h.capacity,
                "tokens_per_second": round(h.health.tps, 1) if h.health.tps else None,
                "gpus": _gpus(h.hardware),
                "uptime": round(now - h.connected_at),
                "served": h.served,
            }
            for h in hosts
        ],
        "models": [
            {"name": name, "hosts": len(members), "capacity": sum(h.capacity for h in members),
             "queue": scheduler.queued(name)}
            for name, members in sorted(registry.by_model.items())
        ],
        "rates": rates[-120:],
    })


async def metrics_endpoint(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    if config.metrics_access == "off":
        raise APIError(404, "Metrics are off (coordinator.metrics_access).", code="metrics_disabled")
    if config.metrics_access == "admin" and not has_admin_token(request):
        raise APIError(401, "Metrics need `Authorization: Bearer <admin_token>`.", code="invalid_admin_token")
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_dashboard_routes(app: web.Application) -> None:
    app.router.add_get("/", dashboard_page)
    app.router.add_get("/api/andy/dashboard", dashboard_data)
    app.router.add_get("/metrics", metrics_endpoint)
