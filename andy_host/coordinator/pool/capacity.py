"""What the pool can serve now: the hosts able to take a client job, and their slots.

One definition for the dashboard, ``/api/andy/pool_status`` and anything else that
counts capacity, the same rules the scheduler applies (``Scheduler.admits``) less the
free slot: a host is *serving* when it is active (not paused, draining or with its
backend down), not quarantined (it gets only checks) and not out of rotation after
failures or a backend's ``Retry-After``. A busy host is serving: its slots are taken,
not gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.pool.scheduler import Scheduler


def serving(host: Host, now: float) -> bool:
    """May this host take client jobs (``now`` on the monotonic clock)?"""
    return host.status == "active" and host.trust.quarantined is None and host.health.admits(now, 0)


def resting(host: Host, now: float) -> bool:
    """Active, but out of rotation for a while after failures or a backend's Retry-After."""
    return host.status == "active" and not host.health.admits(now, 0)


def slots(hosts: Iterable[Host], now: float) -> int:
    """Job slots of the hosts that are serving."""
    return sum(h.capacity for h in hosts if serving(h, now))


def pool_totals(registry: Registry, scheduler: Scheduler) -> dict[str, int]:
    """Counts the dashboard and pool_status share."""
    now = time.monotonic()
    hosts = registry.hosts.values()
    return {
        "hosts": len(hosts),
        "serving_hosts": sum(1 for h in hosts if serving(h, now)),
        "capacity": slots(hosts, now),
        "models": len(registry.by_model),
        "in_flight": registry.in_flight(),
        "queued": scheduler.queued(),
    }


def model_rows(registry: Registry, scheduler: Scheduler, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Each model served now (or those of ``names``): its hosts, the slots of those
    serving, its queue."""
    now = time.monotonic()
    rows = []
    for name in sorted(registry.by_model) if names is None else names:
        members = registry.by_model[name]
        rows.append({"name": name, "hosts": len(members), "serving_hosts": sum(1 for h in members if serving(h, now)),
                     "capacity": slots(members, now), "queue": scheduler.queued(name)})
    return rows
