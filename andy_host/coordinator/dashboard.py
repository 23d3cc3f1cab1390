"""What people and operators see: the live dashboard at ``/``, its public JSON feed,
and ``/metrics`` for Prometheus.

The public feed carries only what the page shows: aggregates, host names, models and
typed readings. No host ids, addresses, backend URLs, keys or tokens, and no text a
host wrote other than its name and model names (pause reasons travel as codes and are
shown in the coordinator's words). The page renders every value as text.
Who may read ``/metrics`` is ``coordinator.metrics_access``: public, admin (the admin
token) or off.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from importlib import resources
from typing import Any

from aiohttp import web

from andy_host.coordinator.admin import has_admin_token
from andy_host.coordinator.hosts import Host
from andy_host.coordinator.state import CONFIG, METRICS, REGISTRY, SCHEDULER, STATS
from andy_host.errors import APIError
from andy_host.protocol import GpuReading

PAUSE_WORDS = {
    "active_hours": "outside its owner's hours",
    "vram_low": "GPU memory low",
    "vram_foreign": "owner using the GPU",
    "gpu_hot": "GPU too hot",
    "gpu_error": "GPU error",
    "draining": "shutting down",
    "backend_down": "backend unreachable",
}


def _gpu(gpu: GpuReading) -> dict[str, Any]:
    return {"name": gpu.name, "memory_used": gpu.memory_used, "memory_total": gpu.memory_total,
            "utilization": gpu.utilization_gpu, "temperature": gpu.temperature, "error": gpu.error is not None}


def pause_words(host: Host) -> list[str]:
    words = [PAUSE_WORDS[code] for code in host.pause if code in PAUSE_WORDS]
    if not words and host.status == "backend_down":
        words = [PAUSE_WORDS["backend_down"]]
    if not words and host.status == "draining":
        words = [PAUSE_WORDS["draining"]]
    return words


def public_host(host: Host, now: float) -> dict[str, Any]:
    return {
        "name": host.name,
        "status": host.shown_status,
        "pause": pause_words(host),
        "models": sorted(host.models),
        "load": len(host.jobs),
        "capacity": host.capacity,
        "tokens_per_second": round(host.health.tps, 1) if host.health.tps else None,
        "gpus": [_gpu(g) for g in host.hardware.gpus],
        "uptime": round(now - host.connected_at),
        "served": host.served,
    }


@functools.cache
def _page() -> tuple[str, str]:
    """The page, and a Content-Security-Policy that allows its own inline script only."""
    html = resources.files("andy_host.coordinator").joinpath("static/dashboard.html").read_text()
    script = html.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'")
    return html, csp


async def dashboard_page(request: web.Request) -> web.Response:
    html, csp = _page()
    return web.Response(text=html, content_type="text/html", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
    })


async def dashboard_data(request: web.Request) -> web.Response:
    registry, scheduler = request.app[REGISTRY], request.app[SCHEDULER]
    hosts = sorted(registry.hosts.values(), key=lambda h: h.name)
    now = time.time()
    serving = [h for h in hosts if h.status == "active"]
    return web.json_response({
        "time": now,
        "totals": {
            "hosts": len(hosts),
            "active_hosts": len(serving),
            "models": len(registry.by_model),
            "in_flight": registry.in_flight(),
            "queued": scheduler.queued(),
            "capacity": sum(h.capacity for h in serving),
            "completed": request.app[STATS].completed,
            "rescued": request.app[STATS].rescued,
        },
        "hosts": [public_host(h, now) for h in hosts],
        "models": [
            {"name": name, "hosts": len(members),
             "capacity": sum(h.capacity for h in members if h.status == "active"),
             "queue": scheduler.queued(name)}
            for name, members in sorted(registry.by_model.items())
        ],
        "rates": request.app[METRICS].rates()[-120:],
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
