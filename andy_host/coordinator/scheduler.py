"""Choosing a host for a job, and waiting (bounded) when every host is busy."""

from __future__ import annotations

import asyncio
import itertools

from andy_host.coordinator.hosts import Host, Registry
from andy_host.errors import no_available_hosts

_job_ids = itertools.count(1)


def _serves(host: Host, model: str, kind: str) -> bool:
    return kind != "embed" or host.models[model].embed


def pick(registry: Registry, model: str, exclude: set[str], kind: str = "chat") -> Host | None:
    """The best host now: model loaded first, then the lowest load against capacity."""
    best: Host | None = None
    best_key: tuple[bool, float] | None = None
    for host in registry.by_model.get(model, ()):
        if host.id in exclude or not host.accepts() or not _serves(host, model, kind):
            continue
        key = (model not in host.loaded, len(host.jobs) / host.capacity)
        if best_key is None or key < best_key:
            best, best_key = host, key
    return best


async def acquire(
    registry: Registry, model: str, exclude: set[str], wait: float, kind: str = "chat"
) -> Host:
    """A host with a free slot, waiting while all of them are busy.

    Waits at most ``wait`` seconds. Raises 503 ``No available hosts`` when no host serves the model (or all were tried),
    or when the wait runs out.
    """
    host = pick(registry, model, exclude, kind)
    if host is not None:
        return host
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        changed = registry.changed()
        host = pick(registry, model, exclude, kind)
        if host is not None:
            return host
        candidates = [
            h for h in registry.by_model.get(model, ()) if h.id not in exclude and _serves(h, model, kind)
        ]
        remaining = deadline - loop.time()
        if not candidates or remaining <= 0:
            raise no_available_hosts(model)
        try:
            await asyncio.wait_for(changed.wait(), remaining)
        except TimeoutError:
            raise no_available_hosts(model) from None


def new_job_id() -> str:
    return f"j{next(_job_ids):x}"
