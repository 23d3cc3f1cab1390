"""What people see: the live dashboard at ``/`` and its public JSON feed.

The public feed carries only what the page shows: aggregates, host names, models and
typed readings, the recent history (requests, errors, tokens, time to first token;
see history.py), capacity as capacity.py counts it, and the contributor leaderboard.
No host ids, addresses, backend URLs, keys or tokens, and no text a host wrote other
than its name and model names (pause reasons travel as codes and are shown in the
coordinator's words). The page renders every value as text.

The feed is public and every open page polls it, so its cost does not grow with the
viewers or the pool: it is built at most once every ``dashboard_cache_seconds`` and
shared, and its host and model tables hold at most ``dashboard_max_rows`` rows each
(the serving hosts that served most, the models with most hosts; the totals count
them all).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import time
from collections.abc import Iterable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from andy_host.coordinator.hosts.registry import REGISTRY, Host, Registry
from andy_host.coordinator.observe.feedcache import FeedCache
from andy_host.coordinator.observe.leaderboard import Leaderboard
from andy_host.coordinator.observe.metrics import METRICS
from andy_host.coordinator.observe.stats import STATS
from andy_host.coordinator.pool.capacity import model_rows, pool_totals, resting, serving
from andy_host.coordinator.pool.scheduler import SCHEDULER, Scheduler
from andy_host.coordinator.replication.federation import with_peers
from andy_host.coordinator.store.interface import STORE
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.protocol import GpuReading

PAUSE_WORDS = {
    "active_hours": "outside its owner's hours",
    "vram_low": "GPU memory low",
    "vram_foreign": "owner using the GPU",
    "gpu_hot": "GPU too hot",
    "gpu_error": "GPU error",
    "draining": "shutting down",
    "backend_down": "backend unreachable",
    "resting": "resting after failures",
}
RATE_POINTS = 300  # the chart's seconds of history
LEADERBOARD = web.AppKey("leaderboard", Leaderboard)


FEED = web.AppKey("dashboard_feed", FeedCache)


def _gpu(gpu: GpuReading) -> dict[str, Any]:
    return {"name": gpu.name, "memory_used": gpu.memory_used, "memory_total": gpu.memory_total,
            "utilization": gpu.utilization_gpu, "temperature": gpu.temperature, "error": gpu.error is not None}


def pause_words(host: Host, now: float | None = None) -> list[str]:
    """Why a host takes no jobs, in the coordinator's words (``now``, monotonic: also
    say when it rests after failures). A quarantine is its status, not a reason shown."""
    words = [PAUSE_WORDS[code] for code in host.pause if code in PAUSE_WORDS]
    if not words and host.status == "backend_down":
        words = [PAUSE_WORDS["backend_down"]]
    if not words and host.status == "draining":
        words = [PAUSE_WORDS["draining"]]
    if now is not None and resting(host, now):
        words.append(PAUSE_WORDS["resting"])
    return words


def public_host(host: Host, now: float, monotonic: float) -> dict[str, Any]:
    return {
        "name": host.name,
        "status": host.shown_status,
        "serving": serving(host, monotonic),
        "pause": pause_words(host, monotonic),
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


def shown_hosts(hosts: Iterable[Host], rows: int, now: float) -> list[Host]:
    """At most ``rows`` hosts, by name: the serving ones that served most first."""
    top = heapq.nsmallest(rows, hosts, key=lambda h: (not serving(h, now), -h.served, h.name))
    return sorted(top, key=lambda h: h.name)


def shown_models(registry: Registry, scheduler: Scheduler, rows: int) -> list[dict[str, Any]]:
    """At most ``rows`` model rows, by name: the models with most hosts first."""
    names = heapq.nsmallest(rows, registry.by_model, key=lambda name: (-len(registry.by_model[name]), name))
    return model_rows(registry, scheduler, sorted(names))


async def dashboard_data(request: web.Request) -> web.Response:
    cache = request.app[FEED]
    if not cache.fresh():
        async with cache.lock:
            if not cache.fresh():  # another viewer built it while this one waited
                cache.body, cache.built_at = orjson.dumps(await _feed(request.app)), time.monotonic()
    return web.Response(body=cache.body, content_type="application/json", charset="utf-8")


async def _feed(app: web.Application) -> dict[str, Any]:
    registry, scheduler, history = app[REGISTRY], app[SCHEDULER], app[METRICS].history
    rows = app[CONFIG].dashboard_max_rows
    now, monotonic = time.time(), time.monotonic()
    totals = with_peers(app, pool_totals(registry, scheduler), registry)
    return {
        "time": now,
        "totals": {**totals, "active_hosts": totals["serving_hosts"],
                   "completed": app[STATS].completed, "rescued": app[STATS].rescued},
        "quality": history.summary(),
        "hosts": [public_host(h, now, monotonic) for h in shown_hosts(registry.hosts.values(), rows, monotonic)],
        "models": shown_models(registry, scheduler, rows),
        "rates": history.rates(RATE_POINTS),
        "leaderboard": await app[LEADERBOARD].boards(app[STORE]),
    }


def add_dashboard_routes(app: web.Application) -> None:
    config = app[CONFIG]
    app[LEADERBOARD] = Leaderboard(config.leaderboard_size, config.leaderboard_refresh)
    app[FEED] = FeedCache(config.dashboard_cache_seconds)
    app.router.add_get("/", dashboard_page)
    app.router.add_get("/api/andy/dashboard", dashboard_data)
