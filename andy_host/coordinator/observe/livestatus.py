"""The coordinator's live totals for its admin (``GET /api/andy/admin/status``, which
``andy-host coordinator status`` prints): hosts by status, models with the slots of the
hosts able to serve them (capacity.py), the queue, and requests and tokens per second
over the last minute (history.py's one-second points).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from andy_host import __version__
from andy_host.coordinator.hosts.registry import REGISTRY
from andy_host.coordinator.observe.history import Point
from andy_host.coordinator.observe.metrics import METRICS
from andy_host.coordinator.observe.scrape import STATUSES
from andy_host.coordinator.observe.stats import STATS
from andy_host.coordinator.pool.capacity import model_rows, pool_totals
from andy_host.coordinator.pool.scheduler import SCHEDULER
from andy_host.coordinator.replication.federation import with_peers
from andy_host.coordinator.web.appconfig import CONFIG

RATE_SECONDS = 60.0  # the window of the request and token rates


def rates(points: Sequence[Point], seconds: float = RATE_SECONDS) -> dict[str, float]:
    """Work requests, pool failures and completion tokens per second between the newest
    point and the oldest within ``seconds`` of it (zero with fewer than two points)."""
    if len(points) < 2:
        return {"window_seconds": 0.0, "requests_per_s": 0.0, "errors_per_s": 0.0, "tokens_per_s": 0.0}
    newest = points[-1]
    oldest = next(p for p in points if p.t >= newest.t - seconds)
    span = newest.t - oldest.t
    if span <= 0:
        return {"window_seconds": 0.0, "requests_per_s": 0.0, "errors_per_s": 0.0, "tokens_per_s": 0.0}
    return {"window_seconds": round(span, 1),
            "requests_per_s": round((newest.requests - oldest.requests) / span, 3),
            "errors_per_s": round((newest.errors - oldest.errors) / span, 3),
            "tokens_per_s": round((newest.tokens - oldest.tokens) / span, 2)}


def hosts_by_status(app: web.Application) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)  # the statuses andy_hosts{status} has on /metrics, 0 included
    for host in app[REGISTRY].hosts.values():
        status = "quarantined" if host.trust.quarantined else host.shown_status
        counts[status] = counts.get(status, 0) + 1
    return counts


def live_status(app: web.Application) -> dict[str, Any]:
    registry, scheduler = app[REGISTRY], app[SCHEDULER]
    return {
        "version": __version__,
        "time": round(time.time(), 1),
        "enrolment": app[CONFIG].enrolment,
        "totals": with_peers(app, pool_totals(registry, scheduler), registry),
        "hosts": hosts_by_status(app),
        "models": model_rows(registry, scheduler),
        "rates": rates(list(app[METRICS].history.points)),
        "stats": app[STATS].as_dict(),
    }
