"""Choosing a host for each job, and a fair, bounded queue when every host is busy.

Routing among connected hosts that serve the model, admit jobs now (not paused,
draining, cooling down, ejected or quarantined) and have a free slot: the model
already loaded first, then load, measured speed and standing together (see
``Scheduler.pick``), then the host assigned least recently. A host not yet measured
counts at the median speed of the model's measured hosts: it earns its place, it
does not win every decision until measured. A suspect host counts for less, and a
stranger for no faster than the fastest trusted host of the model. Two
shares keep answer checks possible whatever speed a host claims (a junk answer is
fast): a trusted host takes ``trusted_share`` of the jobs, and a host in probation at
most ``probation_share`` of those another free host could take (and none while as many
checks of it run as may: its work waits for its checks). A key
restricted to trusted hosts is routed to hosts with a trusted token only. A slot is
reserved the moment a host is chosen, so no host ever gets more jobs than it
advertised.

Waiting requests queue per model, grouped by client; a freed slot goes to the
waiting client that was served least recently (round-robin across clients, new
clients first), so one busy client cannot starve the rest. Past ``queue_timeout``
or ``max_queue`` the answer is 503, and a client holding more than
``max_queue_per_client`` places gets 429, both with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from aiohttp import web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts.registry import Assignment, Host, Registry
from andy_host.coordinator.pool.work import NEED_TOOLS, feature_needs, needed_context, split_needs
from andy_host.coordinator.trust.standing import TrustPolicy
from andy_host.errors import APIError, context_exceeded, no_available_hosts

MAX_REMEMBERED_CLIENTS = 100_000
NONE: frozenset[str] = frozenset()
NEUTRAL_TPS = 1.0  # the speed of every host of a model that has no measured host yet
LOADED_BONUS = 1e9  # a loaded model beats any speed difference


@dataclass(eq=False, slots=True)
class Waiter:
    client: str
    kind: str
    exclude: set[int]
    needs: frozenset[str]
    trusted_only: bool
    future: asyncio.Future[Assignment]


@dataclass(slots=True)
class ModelQueue:
    """Waiters of one model, grouped by client, served round-robin."""

    clients: OrderedDict[str, deque[Waiter]] = field(default_factory=OrderedDict)
    size: int = 0

    def push(self, waiter: Waiter) -> None:
        self.clients.setdefault(waiter.client, deque()).append(waiter)
        self.size += 1

    def remove(self, waiter: Waiter) -> None:
        queue = self.clients.get(waiter.client)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.size -= 1
            if not queue:
                del self.clients[waiter.client]

    def count(self, client: str) -> int:
        return len(self.clients.get(client, ()))


def supports(host: Host, model: str, needs: frozenset[str]) -> bool:
    """Does ``host`` offer every feature in ``needs`` for ``model`` (tools: the model's
    template), and a context that can hold the prompt (unless its context is not known)?"""
    info = host.models[model]
    features, context = split_needs(needs)
    if NEED_TOOLS in features and not info.tools:
        return False
    if info.served_context is not None and info.served_context < context:
        return False
    return all(need in host.features for need in features if need != NEED_TOOLS)


MAX_ALLOWANCES = 100_000  # probation allowances remembered (oldest dropped)


@dataclass(slots=True)
class _Best:
    """The best host offered so far (ties to the one assigned least recently)."""

    host: Host | None = None
    score: float = -1.0

    def offer(self, host: Host, score: float) -> None:
        if self.host is None or score > self.score or (
                score == self.score and host.last_assigned < self.host.last_assigned):
            self.host, self.score = host, score


class Scheduler:
    def __init__(self, registry: Registry, config: CoordinatorConfig) -> None:
        self.registry = registry
        self.config = config
        self.trust_policy = TrustPolicy(config.quarantine_score, config.release_after)
        self.queues: dict[str, ModelQueue] = {}
        self._assignments = itertools.count(1)  # also numbers the jobs
        self.served_at: OrderedDict[str, int] = OrderedDict()  # client -> last assignment
        self.rng = random.Random()
        self._picks: dict[str, int] = {}  # client jobs given out, by model
        self._allowance: dict[tuple[int, str], tuple[float, int]] = {}  # probation hosts': (jobs, picks then)
        registry.on_capacity = self.dispatch

    def queued(self, model: str | None = None) -> int:
        if model is not None:
            queue = self.queues.get(model)
            return queue.size if queue else 0
        return sum(q.size for q in self.queues.values())

    def candidates(
        self, model: str, exclude: set[int], kind: str, needs: frozenset[str] = NONE, trusted_only: bool = False
    ) -> list[Host]:
        """Hosts that could ever run this job (connected, serve the model, not excluded,
        not quarantined, trusted when asked)."""
        return [
            h
            for h in self.registry.by_model.get(model, ())
            if h.conn not in exclude
            and (kind != "embed" or h.models[model].embed)
            and supports(h, model, needs)
            and (h.trusted or not trusted_only)
            and h.trust.quarantined is None
        ]

    def unavailable(
        self, model: str, exclude: set[int], kind: str, needs: frozenset[str], trusted_only: bool
    ) -> APIError:
        """Why no connected host could run this job: 400 ``context_length_exceeded`` when
        hosts could but for the prompt, longer than the context each serves (it cannot be
        fewer tokens than the need says: see ``work.CONTEXT_NEED``); else 503."""
        floor = needed_context(needs)
        able = self.candidates(model, exclude, kind, feature_needs(needs), trusted_only) if floor else []
        contexts = [c for h in able if (c := h.models[model].served_context) is not None]
        if contexts:  # every one of them serves a known context smaller than the prompt
            return context_exceeded(max(contexts), floor, estimated=True)
        return no_available_hosts(model, trusted_only=trusted_only)

    def median_speed(self, model: str) -> float:
        """The median measured tokens/s of the model's hosts: what an unmeasured host counts as."""
        speeds = sorted(h.health.tps for h in self.registry.by_model.get(model, ()) if h.health.tps)
        if not speeds:
            return NEUTRAL_TPS
        middle = len(speeds) // 2
        return speeds[middle] if len(speeds) % 2 else (speeds[middle - 1] + speeds[middle]) / 2

    def reference_speed(self, model: str) -> float | None:
        """The fastest measured trusted host of the model: the most a stranger's speed
        counts for in routing (None: no trusted host measured)."""
        return max((h.health.tps for h in self.registry.by_model.get(model, ()) if h.trusted and h.health.tps),
                   default=None)

    def pick(
        self, model: str, exclude: set[int], kind: str = "chat", needs: frozenset[str] = NONE,
        trusted_only: bool = False,
    ) -> Host | None:
        """The best host now; ``exclude`` holds connections (``Host.conn``) already tried.

        Score: the model loaded first; then expected speed for one more stream, the
        measured tokens/s discounted by the share of slots in use (``tps * (1 - load/2)``)
        and by suspicion (``trust.weight``), so equal hosts balance by load and a much
        faster host wins while it has room; an unmeasured host counts at the model's
        median speed; ties go to the host assigned least recently.
        """
        hosts = self.registry.by_model.get(model)
        if not hosts:
            return None
        now = time.monotonic()
        median: float | None = None
        reference: float | None = -1.0  # not yet looked up (None: no trusted host measured)
        best, trusted, settled = _Best(), _Best(), _Best()
        settled_busy = False  # a settled host that could take the job once a slot is free
        for host in hosts:
            if not self.admits(host, model, now, exclude, kind, needs, trusted_only):
                settled_busy = settled_busy or (not self.in_probation(host) and self.could(
                    host, model, now, exclude, kind, needs, trusted_only))
                continue
            tps = host.health.tps
            if tps is None:
                median = self.median_speed(model) if median is None else median
                tps = median
            if not host.trusted:
                reference = self.reference_speed(model) if reference == -1.0 else reference
                # no faster than the reference: a junk answer is free to make
                tps = tps if reference is None else min(tps, reference)
            score = tps * (1.0 - 0.5 * len(host.jobs) / host.capacity) * host.trust.weight(self.trust_policy)
            if model in host.loaded:
                score += LOADED_BONUS
            best.offer(host, score)
            if host.trusted:
                trusted.offer(host, score)
            if not self.in_probation(host):
                settled.offer(host, score)
        chosen = self._share(model, best.host, trusted.host, settled.host, settled_busy or settled.host is not None)
        if chosen is not None:
            self._picks[model] = self._picks.get(model, 0) + 1
        return chosen

    def in_probation(self, host: Host) -> bool:
        """A stranger that has not yet passed its probation's checks, or whose checks
        lag behind its work (as many running as may): it is held to a share."""
        return not host.trusted and (host.trust.checks_passed < self.config.check_probation or host.checks_full)

    def _share(
        self, model: str, best: Host | None, trusted: Host | None, settled: Host | None, settled_serves: bool,
    ) -> Host | None:
        """The shares that keep checks possible, whatever speed a host claims: a trusted
        host takes ``trusted_share`` of the jobs; a host in probation at most
        ``probation_share`` of the model's jobs while a settled host serves it (the job
        goes to a settled host, or waits for one's slot: None)."""
        if trusted is not None and self.rng.random() < self.config.trusted_share:
            return trusted
        if best is None or not self.in_probation(best) or not settled_serves:
            return best
        if not best.checks_full and self._allowed(best, model):
            return best
        return settled

    def _allowed(self, host: Host, model: str) -> bool:
        """Spend one job of a probation host's allowance: it earns ``probation_share`` of
        a job for each job of the model given to anyone, up to one in hand."""
        picks = self._picks.get(model, 0)
        key = (host.conn, model)
        allowance, seen = self._allowance.get(key, (1.0, picks))
        allowance = min(1.0, allowance + self.config.probation_share * (picks - seen))
        allowed = allowance >= 1.0
        self._allowance[key] = (allowance - 1.0 if allowed else allowance, picks)
        if len(self._allowance) > MAX_ALLOWANCES:
            self._allowance.pop(next(iter(self._allowance)))
        return allowed

    @staticmethod
    def could(
        host: Host, model: str, now: float, exclude: set[int], kind: str, needs: frozenset[str], trusted_only: bool,
    ) -> bool:
        """Could ``host`` take this job once it has a free slot (it is busy, not away)?"""
        return (host.status == "active" and host.conn not in exclude and host.trust.quarantined is None
                and host.health.admits(now, 0)
                and supports(host, model, needs) and (host.trusted or not trusted_only)
                and (kind != "embed" or host.models[model].embed))

    @staticmethod
    def admits(
        host: Host, model: str, now: float, exclude: set[int], kind: str, needs: frozenset[str], trusted_only: bool
    ) -> bool:
        """May ``host`` take this client job now?"""
        if len(host.jobs) >= host.capacity or host.status != "active" or host.conn in exclude:
            return False
        if not host.health.admits(now, len(host.jobs)) or host.trust.quarantined is not None:
            return False
        if not supports(host, model, needs) or (trusted_only and not host.trusted):
            return False
        return kind != "embed" or host.models[model].embed

    def reserve(self, host: Host) -> Assignment | None:
        """A slot on this very host for an answer check (quarantined hosts included), if
        it has one free now."""
        if host.id not in self.registry.hosts or len(host.jobs) >= host.capacity or host.status != "active":
            return None
        return self.assign(host, "checks")

    def assign(self, host: Host, client: str, kind: str = "chat") -> Assignment:
        turn = next(self._assignments)
        assignment = Assignment(id=f"j{turn:x}", host=host, events=self.registry.new_events(), kind=kind)
        host.jobs[assignment.id] = assignment
        host.last_assigned = turn
        self.served_at[client] = turn
        self.served_at.move_to_end(client)
        if len(self.served_at) > MAX_REMEMBERED_CLIENTS:
            self.served_at.popitem(last=False)
        return assignment

    def release(self, assignment: Assignment) -> None:
        if assignment.host.jobs.pop(assignment.id, None) is not None:
            self.dispatch()

    async def acquire(
        self,
        model: str,
        exclude: set[int],
        wait: float,
        kind: str = "chat",
        client: str = "",
        needs: frozenset[str] = NONE,
        trusted_only: bool = False,
    ) -> Assignment:
        """A reserved slot on the best host, waiting fairly while all are busy.

        Raises 503 ``No available hosts`` at once when no connected host could ever run
        the job (:meth:`candidates`; nobody waits for a host to connect), when the queue
        is full or the wait runs out; 429 when this client holds too many places.
        """
        queue = self.queues.get(model)
        if queue is None or queue.size == 0:
            host = self.pick(model, exclude, kind, needs, trusted_only)
            if host is not None:
                return self.assign(host, client, kind)
        if not self.candidates(model, exclude, kind, needs, trusted_only):
            raise self.unavailable(model, exclude, kind, needs, trusted_only)
        queue = self.queues.setdefault(model, ModelQueue())
        retry_after = str(max(1, math.ceil(self.config.queue_timeout / 4)))
        if queue.count(client) >= self.config.max_queue_per_client:
            raise APIError(
                429,
                f"Too many of your requests are already waiting for `{model}`; retry after {retry_after}s.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": retry_after},
            )
        if queue.size >= self.config.max_queue:
            raise no_available_hosts(model, int(retry_after))
        waiter = Waiter(client, kind, exclude, needs, trusted_only, asyncio.get_running_loop().create_future())
        queue.push(waiter)
        self.dispatch()
        granted = waiter.future
        try:
            return await asyncio.wait_for(asyncio.shield(granted), wait)
        except TimeoutError:
            if granted.done() and not granted.cancelled():
                return granted.result()  # granted just as the wait ran out
            raise no_available_hosts(model, int(retry_after)) from None
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(granted.result())  # the client left: give the slot back
            raise
        finally:
            queue.remove(waiter)
            if not granted.done():
                granted.cancel()

    def dispatch(self) -> None:
        """Hand free slots to waiting requests: the client served least recently first."""
        for model, queue in self.queues.items():
            while queue.size:
                order = sorted(queue.clients, key=lambda c: self.served_at.get(c, 0))
                for client in order:
                    waiter = queue.clients[client][0]
                    if waiter.future.done():
                        queue.remove(waiter)
                        break
                    host = self.pick(model, waiter.exclude, waiter.kind, waiter.needs, waiter.trusted_only)
                    if host is not None:
                        queue.remove(waiter)
                        waiter.future.set_result(self.assign(host, client, waiter.kind))
                        break
                else:
                    break  # nobody waiting can be served now


SCHEDULER = web.AppKey("scheduler", Scheduler)
