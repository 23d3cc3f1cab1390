"""``GET /metrics`` for Prometheus, rendered at most once per ``metrics_cache_seconds``.

Who may read it is ``coordinator.metrics_access``: public, admin (the admin token) or off.
"""

from __future__ import annotations

import time

from aiohttp import web

from andy_host.coordinator.admin.api import has_admin_token
from andy_host.coordinator.observe.feedcache import FeedCache
from andy_host.coordinator.observe.metrics import METRICS
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.errors import APIError

SCRAPE = web.AppKey("metrics_scrape", FeedCache)  # the last /metrics rendered


async def metrics_endpoint(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    if config.metrics_access == "off":
        raise APIError(404, "Metrics are off (coordinator.metrics_access).", code="metrics_disabled")
    if config.metrics_access == "admin" and not has_admin_token(request):
        raise APIError(401, "Metrics need `Authorization: Bearer <admin_token>`.", code="invalid_admin_token")
    cache = request.app[SCRAPE]
    if not cache.fresh():  # one render per metrics_cache_seconds, whoever scrapes
        cache.body, cache.built_at = request.app[METRICS].render(), time.monotonic()
    return web.Response(body=cache.body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_metrics_routes(app: web.Application) -> None:
    app[SCRAPE] = FeedCache(app[CONFIG].metrics_cache_seconds)
    app.router.add_get("/metrics", metrics_endpoint)
