"""Connected hosts, the models they serve, and the jobs each one holds."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from andy_host import modelnames
from andy_host.coordinator.health import HostHealth
from andy_host.protocol import Chunk, Done, JobError, ModelInfo


@dataclass(slots=True)
class HostLost:
    """Put on a job's queue when its host disconnects or is declared dead."""

    reason: str


JobEvent = Chunk | Done | JobError | HostLost


@dataclass(eq=False, slots=True)
class Assignment:
    """One attempt of a job on one host."""

    id: str
    host: Host
    events: asyncio.Queue[JobEvent] = field(default_factory=asyncio.Queue)
    finished: bool = False
    sent_at: float = 0.0
    first_token_at: float | None = None


_connections = itertools.count(1)


@dataclass(eq=False)
class Host:
    """One connection of a host (a host that reconnects is a new Host, same id)."""

    id: str
    name: str
    backend: str
    capacity: int
    send: Callable[[str], Awaitable[None]]
    close: Callable[[int, str], Awaitable[Any]]
    models: dict[str, ModelInfo] = field(default_factory=dict)
    backend_version: str | None = None
    hardware: dict[str, Any] = field(default_factory=dict)
    status: str = "active"
    reason: str | None = None
    loaded: set[str] = field(default_factory=set)
    features: set[str] = field(default_factory=set)
    jobs: dict[str, Assignment] = field(default_factory=dict)
    health: HostHealth = field(default_factory=HostHealth)
    last_assigned: int = 0
    conn: int = field(default_factory=lambda: next(_connections))
    token_id: int | None = None
    peer: str = ""
    connected_at: float = field(default_factory=time.time)
    served: int = 0
    failures: int = 0
    tokens: int = 0

    @property
    def free(self) -> int:
        return self.capacity - len(self.jobs)


class Registry:
    """Hosts by id and by model; the set of every model name ever served."""

    def __init__(self, known_models: Iterable[str] = ()) -> None:
        self.hosts: dict[str, Host] = {}
        self.by_model: dict[str, set[Host]] = {}
        self.known_models: set[str] = set(known_models)
        self.on_capacity: Callable[[], None] | None = None
        self.on_removed: Callable[[Host], None] | None = None
        self.on_new_models: Callable[[set[str]], None] | None = None

    def add(self, host: Host) -> None:
        self.hosts[host.id] = host
        self._index(host)

    def remove(self, host: Host, reason: str) -> None:
        if self.hosts.get(host.id) is host:
            del self.hosts[host.id]
            if self.on_removed is not None:
                self.on_removed(host)
        self._unindex(host)
        for assignment in list(host.jobs.values()):
            assignment.events.put_nowait(HostLost(reason))
        host.jobs.clear()
        self.notify()

    def set_models(self, host: Host, models: list[ModelInfo]) -> None:
        self._unindex(host)
        host.models = {m.name: m for m in models}
        host.loaded = {m.name for m in models if m.loaded}
        self._index(host)
        self.notify()

    def _index(self, host: Host) -> None:
        new = set(host.models) - self.known_models
        for name in host.models:
            self.by_model.setdefault(name, set()).add(host)
        if new:
            self.known_models |= new
            if self.on_new_models:
                self.on_new_models(new)

    def _unindex(self, host: Host) -> None:
        for name in host.models:
            hosts = self.by_model.get(name)
            if hosts is not None:
                hosts.discard(host)
                if not hosts:
                    del self.by_model[name]

    def served_models(self) -> list[str]:
        return sorted(self.by_model)

    def resolve(self, requested: str) -> str | None:
        """The served model meant; else a known (previously served) one; else None."""
        return modelnames.resolve(requested, self.by_model) or modelnames.resolve(
            requested, self.known_models
        )

    def notify(self) -> None:
        """Capacity may have changed: let the scheduler hand slots to waiting requests."""
        if self.on_capacity is not None:
            self.on_capacity()
