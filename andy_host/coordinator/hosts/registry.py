"""Connected hosts, the models they serve, and the jobs each one holds.

Everything here is bounded by what the coordinator allows, not by what hosts send:
models per host (``max_models_per_host``), the set of known model names (served now,
or within ``known_model_ttl``; at most ``max_known_models``), and each job's queue of
events (``max_job_buffer_chars``). Escrows (trust/escrow.py) are kept by host id for
the process's lifetime, one small record per id that served a client job: an id that
only connected leaves none behind.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from andy_host import modelnames
from andy_host.coordinator.hosts.health import HostHealth
from andy_host.coordinator.pool.events import JobEvents
from andy_host.coordinator.trust.escrow import Escrow
from andy_host.coordinator.trust.standing import HostTrust
from andy_host.protocol import Chunk, Done, Hardware, JobError, ModelInfo

log = structlog.get_logger("andy_host.hosts")


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
    events: JobEvents[JobEvent]
    kind: str = "chat"
    finished: bool = False
    sent_at: float = 0.0
    first_token_at: float | None = None


@dataclass(eq=False)
class Host:
    """One connection of a host (a host that reconnects is a new Host, same id)."""

    id: str
    name: str
    backend: str
    capacity: int
    send: Callable[[str], Awaitable[None]]
    close: Callable[[int, str], Awaitable[Any]]
    conn: int  # this connection's number, unique in the process
    models: dict[str, ModelInfo] = field(default_factory=dict)
    backend_version: str | None = None
    hardware: Hardware = field(default_factory=Hardware)
    protocol: int = 1
    status: str = "active"
    reason: str | None = None  # the host's own words: logs and the admin only
    pause: list[str] = field(default_factory=list)  # pause reason codes
    loaded: set[str] = field(default_factory=set)
    features: set[str] = field(default_factory=set)
    features_lost: set[str] = field(default_factory=set)  # claimed, but found not to work
    jobs: dict[str, Assignment] = field(default_factory=dict)
    health: HostHealth = field(default_factory=HostHealth)
    last_assigned: int = 0
    token_id: int | None = None
    trusted: bool = False  # its token is marked trusted: a reference for checks
    trust: HostTrust = field(default_factory=HostTrust)  # its standing (kept across reconnects)
    escrow: Escrow = field(default_factory=Escrow)  # its credit held for checks (by id: Registry.escrows)
    secret_hash: str | None = None  # the credential of an open-enrolment host
    issued_secret: str | None = None  # a secret to give it in the welcome (then forgotten)
    group: str = ""  # the address group it connected from (never shown)
    connected_at: float = field(default_factory=time.time)
    last_frame: float = field(default_factory=time.monotonic)
    served: int = 0  # client jobs credited to this connection (a stranger's once checked: escrow.py)
    failures: int = 0
    tokens: int = 0  # measured completion tokens of client jobs, credited likewise
    checking: bool = False  # an answer check of it is running
    checks_full: bool = False  # as many checks of it run as may (check_parallel): it waits for them

    @property
    def free(self) -> int:
        return self.capacity - len(self.jobs)

    @property
    def shown_status(self) -> str:
        """The status people see: ``quarantined``; ``idle`` when active but sharing no
        model (its owner withheld them all); ``busy`` when active with every slot taken."""
        if self.trust.quarantined is not None:
            return "quarantined"
        if self.status == "active" and not self.models:
            return "idle"
        return "busy" if self.status == "active" and self.free <= 0 else self.status

    def silent_for(self, now: float) -> float:
        """Seconds without a frame, counted from its last frame or its newest job."""
        newest = max((a.sent_at for a in self.jobs.values()), default=0.0)
        return now - max(self.last_frame, newest)


class Registry:
    """Hosts by id and by model; the names of models served now or recently."""

    def __init__(
        self,
        known_models: Iterable[tuple[str, float]] = (),
        max_models_per_host: int = 128,
        max_known_models: int = 1000,
        job_buffer_chars: int = 1 << 20,
    ) -> None:
        self.hosts: dict[str, Host] = {}
        self.by_model: dict[str, set[Host]] = {}
        self.groups: dict[str, int] = {}  # hosts in the registry per address group
        self.trusted_by_model: dict[str, int] = {}  # hosts on trusted tokens per model
        # each host id's escrow (escrow.py) for this process: a reconnect keeps it; one
        # that never earned anything is dropped when its host leaves
        self.escrows: dict[str, Escrow] = {}
        self.known: dict[str, float] = dict(known_models)  # name -> when last served (wall clock)
        self.remote: set[str] = set()  # models other replicas serve now (replicated mode)
        self.max_models_per_host = max_models_per_host
        self.max_known_models = max_known_models
        self.job_buffer_chars = job_buffer_chars
        self.on_capacity: Callable[[], None] | None = None
        self.on_removed: Callable[[Host], None] | None = None
        self.new_names: set[str] = set()  # model names to record in the store (flushed by housekeeping)
        self.forgotten_names: set[str] = set()
        self._connections = itertools.count(1)
        self._established: set[str] | None = None

    def next_conn(self) -> int:
        """A number for a new connection, never reused in this process."""
        return next(self._connections)

    def new_events(self) -> JobEvents[JobEvent]:
        return JobEvents(self.job_buffer_chars)

    def add(self, host: Host) -> None:
        replaced = self.hosts.get(host.id)
        if replaced is not None and replaced is not host:
            self._count_group(replaced.group, -1)
        if replaced is not host:
            self._count_group(host.group, 1)
        self.hosts[host.id] = host
        host.escrow = self.escrows.setdefault(host.id, host.escrow)
        self._index(host)

    def _count_group(self, group: str, delta: int) -> None:
        left = self.groups.get(group, 0) + delta
        if left > 0:
            self.groups[group] = left
        else:
            self.groups.pop(group, None)

    def remove(self, host: Host, reason: str) -> None:
        if self.hosts.get(host.id) is host:
            del self.hosts[host.id]
            self._count_group(host.group, -1)
            if host.escrow.empty and self.escrows.get(host.id) is host.escrow:
                del self.escrows[host.id]
            if self.on_removed is not None:
                self.on_removed(host)
        self._unindex(host)
        for assignment in list(host.jobs.values()):
            assignment.events.end(HostLost(reason), 0)
        host.jobs.clear()
        self.notify()

    def set_models(self, host: Host, models: list[ModelInfo]) -> None:
        if len(models) > self.max_models_per_host:
            log.warning("host.models_capped", host_id=host.id, offered=len(models), kept=self.max_models_per_host)
            models = models[: self.max_models_per_host]
        self._unindex(host)
        host.models = {m.name: m for m in models}
        host.loaded = {m.name for m in models if m.loaded}
        self._index(host)
        self.notify()

    def _index(self, host: Host) -> None:
        now = time.time()
        new = {name for name in host.models if name not in self.known}
        for name in host.models:
            hosts = self.by_model.setdefault(name, set())
            if host.trusted and host not in hosts:
                self.trusted_by_model[name] = self.trusted_by_model.get(name, 0) + 1
            hosts.add(host)
            self.known[name] = now
        if new:
            self.new_names |= new
            self.forget(now, ttl=None)

    def _unindex(self, host: Host) -> None:
        now = time.time()
        for name in host.models:
            hosts = self.by_model.get(name)
            if hosts is not None:
                if host.trusted and host in hosts:
                    left = self.trusted_by_model.get(name, 0) - 1
                    if left > 0:
                        self.trusted_by_model[name] = left
                    else:
                        self.trusted_by_model.pop(name, None)
                hosts.discard(host)
                self.known[name] = now
                if not hosts:
                    del self.by_model[name]

    def forget(self, now: float, ttl: float | None) -> list[str]:
        """Drop names no host serves that were last served over ``ttl`` ago, and the
        least recently served ones while there are more than ``max_known_models``."""
        idle = sorted((at, name) for name, at in self.known.items() if name not in self.by_model)
        gone = [name for at, name in idle if ttl is not None and now - at > ttl]
        excess = len(self.known) - len(gone) - self.max_known_models
        if excess > 0:
            kept = [name for _, name in idle if name not in set(gone)]
            gone += kept[:excess]
        for name in gone:
            del self.known[name]
            self.new_names.discard(name)
        self.forgotten_names.update(gone)
        return gone

    def drain_names(self) -> tuple[set[str], set[str]]:
        """Names first served and names forgotten since the last call (for the store)."""
        new, gone = self.new_names, self.forgotten_names
        self.new_names, self.forgotten_names = set(), set()
        return new, gone

    def served_models(self) -> list[str]:
        return sorted(self.by_model)

    def pool_models(self) -> list[str]:
        """Models served here or, in replicated mode, by another replica's hosts: the
        pool's models, whichever replica a client asks."""
        return sorted(self.by_model.keys() | self.remote)

    def in_flight(self) -> int:
        return sum(len(h.jobs) for h in self.hosts.values())

    def checkable(self, host: Host) -> bool:
        """Can an answer check of this host be made now: is it a stranger and does a
        trusted host serve a model it serves? Where none does, its credit cannot wait
        for a check (escrow.py credits it at once)."""
        return not host.trusted and any(name in self.trusted_by_model for name in host.models)

    def established(self) -> set[str]:
        """Models served by a trusted host or one that passed an answer check: a name a
        stranger advertises must not shadow them (``andy-4`` stays the model it was)."""
        if self._established is None:
            self._established = {
                name for name, hosts in self.by_model.items() if any(h.trusted or h.trust.verified for h in hosts)
            }
        return self._established

    def resolve(self, requested: str) -> str | None:
        """The served model meant (names of established hosts first); else one another
        replica serves; else a known (recently served) one; else None."""
        return (modelnames.resolve(requested, self.established()) or modelnames.resolve(requested, self.by_model)
                or modelnames.resolve(requested, self.remote) or modelnames.resolve(requested, self.known))

    def served_context(self, name: str) -> int | None:
        """The most tokens one request for ``name`` may hold on a connected host here:
        the largest context any of its hosts that take client jobs serves (a prompt up
        to it can be routed to that host); None when none says. What /api/show and
        /v1/models report. Where hosts with standing (trusted, or past answer checks)
        serve the model, only theirs count: a stranger's claim would have clients send
        prompts that only the stranger takes."""
        hosts = [h for h in self.by_model.get(name, ()) if h.trust.quarantined is None]
        standing = [h for h in hosts if h.trusted or h.trust.verified]
        return max((c for h in standing or hosts if (c := h.models[name].served_context)), default=None)

    def notify(self) -> None:
        """Hosts, models or standing changed: forget derived views, and let the scheduler
        hand slots to waiting requests."""
        self._established = None
        if self.on_capacity is not None:
            self.on_capacity()


REGISTRY = web.AppKey("registry", Registry)
