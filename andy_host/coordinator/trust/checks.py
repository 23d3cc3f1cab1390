"""Answer checks, strikes and quarantine: how a host earns the pool's trust.

A host that is not on a trusted token has some of its answers checked against a
trusted host's answer to the same deterministic request (trust.py decides what
agrees), in one of two ways, chosen per check:

- a *duplicated job*: a client's own request at temperature 0 that the host just
  answered is asked again of a trusted host (indistinguishable from any other job,
  since it was one; only the reference costs backend work);
- a *canary*: a short question made up from templates, at temperature 0, sent to the
  host as an ordinary job (same shape, same id sequence as client jobs) and compared
  with a trusted host's answer to it (kept for ``reference_ttl``).

A new host is checked at once, then every ``probation_every`` client jobs until it
passed ``check_probation`` checks, then every ``check_every`` jobs. One that fails a
check is checked again a second later (as a suspect it gets fewer jobs, so it would
otherwise wait long for the next); a quarantined one every
``quarantine_check_interval`` seconds, and it is released by passing checks.
Without a trusted host serving the model no check can be made; strikes still count.
Every check task is owned here and awaited at shutdown.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import structlog
from aiohttp import web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.observe.stats import PoolStats
from andy_host.coordinator.pool.relay import Relay
from andy_host.coordinator.pool.scheduler import Scheduler
from andy_host.coordinator.pool.work import Work
from andy_host.coordinator.store.interface import Store
from andy_host.coordinator.trust.standing import HostTrust, TrustPolicy, checked, release, similar, strike
from andy_host.errors import APIError
from andy_host.protocol import ChatRequest, JobRequest, Message

log = structlog.get_logger("andy_host.checks")

MAX_REFERENCES = 2000
DUPLICATE_MAX_TOKENS = 48  # the reference to a client's answer needs only its start
RESERVE_TRIES = 20  # times a check waits RESERVE_WAIT for a free slot on the host it checks
RESERVE_WAIT = 0.5
FOLLOW_UP = 1.0  # seconds before a host that failed a check is checked again

TEMPLATES = (
    "What is the capital of {country}? Answer in one word.",
    "Name one animal that lives in {place}.",
    "What is {a} plus {b}?",
    "Write one short sentence about {thing}.",
    "Translate the word '{word}' into French.",
    "What colour is {thing}?",
    "Give one synonym for the word '{adjective}'.",
    "Is {a} an even number? Answer yes or no.",
    "List three things you might find in {place}.",
    "Finish this sentence: The {thing} was",
)
FILLS = {
    "country": ("France", "Japan", "Italy", "Spain", "Germany", "Canada", "Egypt", "Brazil", "Kenya", "Norway"),
    "place": ("the ocean", "a forest", "the desert", "a city", "the mountains", "a farm", "a river", "a kitchen"),
    "thing": ("a banana", "the sky", "a fire truck", "grass", "a lemon", "snow", "a library", "a bicycle"),
    "word": ("house", "water", "friend", "book", "morning", "bread", "window", "garden"),
    "adjective": ("happy", "fast", "small", "bright", "quiet", "strong", "cold", "old"),
}


def canary(rng: random.Random, max_tokens: int) -> ChatRequest:
    """A short, natural, deterministic request, shaped like any client's."""
    fills = {k: rng.choice(v) for k, v in FILLS.items()}
    prompt = rng.choice(TEMPLATES).format(a=rng.randrange(2, 500), b=rng.randrange(2, 500), **fills)
    return ChatRequest(messages=[Message("user", prompt)], temperature=0.0, seed=rng.randrange(2**31),
                       max_tokens=max_tokens, stream=rng.random() < 0.5)


def deterministic(request: JobRequest) -> bool:
    return isinstance(request, ChatRequest) and request.temperature == 0 and not request.continuation


class Checker:
    """The relay's observer: strikes, answers to check, checks and their verdicts."""

    def __init__(
        self, registry: Registry, scheduler: Scheduler, relay: Relay, config: CoordinatorConfig, store: Store,
        stats: PoolStats,
    ) -> None:
        self.registry, self.scheduler, self.relay, self.config, self.store = registry, scheduler, relay, config, store
        self.stats = stats
        self.policy = TrustPolicy(config.quarantine_score, config.release_after)
        self.rng = random.Random()
        self._references: OrderedDict[tuple[str, str, int], tuple[str, float]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: dict[str, HostTrust] = {}  # standings to write at the next flush

    # what the relay reports -----------------------------------------------------------

    def strike(self, host: Host, reason: str) -> None:
        self.stats.strikes += 1
        log.warning("host.strike", host_id=host.id, reason=reason, score=host.trust.score + 1)
        if strike(host.trust, self.policy, reason):
            self._quarantined(host)

    def answered(self, host: Host, work: Work, text: str) -> None:
        """A client job the host alone answered: count it, and check it when one is due
        (plain chat only: the checks compare text)."""
        if host.trusted or work.kind != "chat" or not work.continuable:
            return
        model, request = work.model, work.request
        host.trust.jobs_since_check += 1
        if not self._due(host):
            return
        if isinstance(request, ChatRequest) and deterministic(request):
            self._start(host, self._duplicate(host, model, request, text))
        else:
            self._start(host, self._canary(host))

    def joined(self, host: Host) -> None:
        """A host connected: check it at once while it is new or quarantined."""
        trust = host.trust
        if not host.trusted and (trust.quarantined is not None or trust.checks_passed < self.config.check_probation):
            self._start(host, self._canary(host))

    def _due(self, host: Host) -> bool:
        trust = host.trust
        if host.checking:
            return False
        if trust.checks_passed < self.config.check_probation:
            return trust.jobs_since_check >= self.config.probation_every
        return trust.jobs_since_check >= self.config.check_every

    # checks --------------------------------------------------------------------------

    def _start(self, host: Host, check: Coroutine[Any, Any, bool | None]) -> None:
        host.checking = True

        async def run() -> None:
            try:
                verdict = await check
                if verdict is not None:
                    self._verdict(host, verdict)
            finally:
                host.checking = False

        task = asyncio.get_running_loop().create_task(run(), name=f"check-{host.id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _start_later(self, host: Host) -> None:
        async def later() -> None:
            await asyncio.sleep(FOLLOW_UP)
            if host.id in self.registry.hosts and not host.checking:
                self._start(host, self._canary(host))

        task = asyncio.get_running_loop().create_task(later(), name=f"recheck-{host.id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("check.crashed", error=repr(task.exception()), exc_info=task.exception())

    async def check_now(self, host: Host) -> bool | None:
        """Run a canary check of ``host`` and wait for its verdict (the admin's command)."""
        host.checking = True
        try:
            verdict = await self._canary(host)
        finally:
            host.checking = False
        if verdict is not None:
            self._verdict(host, verdict)
        return verdict

    def _checkable_model(self, host: Host) -> str | None:
        """A chat model of the host that a trusted host serves too."""
        counts, own = self.registry.trusted_by_model, 1 if host.trusted else 0
        models = [name for name in host.models if counts.get(name, 0) > own]
        return self.rng.choice(sorted(models)) if models else None

    async def _canary(self, host: Host) -> bool | None:
        model = self._checkable_model(host)
        if model is None:
            return None
        request = canary(self.rng, self.config.check_max_tokens)
        reference = await self._reference(host, model, request)
        if reference is None:
            return None
        answer = await self._on_host(host, model, request)
        if answer is None:
            return None  # it failed: the relay's health accounting already saw that
        return self._compare(host, model, reference, answer, "canary")

    async def _duplicate(self, host: Host, model: str, request: ChatRequest, text: str) -> bool | None:
        if self._checkable_model(host) is None:
            return None
        again = replace(request, stream=False,
                        max_tokens=min(request.max_tokens or DUPLICATE_MAX_TOKENS, DUPLICATE_MAX_TOKENS))
        reference = await self._on_trusted(host, model, again)
        if reference is None:
            return None
        return self._compare(host, model, reference, text, "duplicate")

    def _compare(self, host: Host, model: str, reference: str, answer: str, how: str) -> bool | None:
        verdict = similar(reference, answer)
        log.info("check.done", host_id=host.id, model=model, how=how, passed=verdict,
                 reference=reference[:80], answer=answer[:80])
        return verdict

    async def _reference(self, host: Host, model: str, request: ChatRequest) -> str | None:
        """A trusted host's answer to the canary (kept for ``reference_ttl``)."""
        key = (model, request.messages[0].content, request.max_tokens or 0)
        now = time.monotonic()
        kept = self._references.get(key)
        if kept is not None and now - kept[1] < self.config.reference_ttl:
            return kept[0]
        text = await self._on_trusted(host, model, request)
        if text is not None:
            self._references[key] = (text, now)
            self._references.move_to_end(key)
            while len(self._references) > MAX_REFERENCES:
                self._references.popitem(last=False)
        return text

    async def _on_trusted(self, host: Host, model: str, request: ChatRequest) -> str | None:
        try:
            assignment = await self.scheduler.acquire(model, {host.conn}, self.config.queue_timeout, "chat",
                                                      "checks", trusted_only=True)
        except APIError:
            return None
        self.stats.check_jobs += 1
        return await self.relay.answer_on(assignment, Work("chat", model, request))

    async def _on_host(self, host: Host, model: str, request: ChatRequest) -> str | None:
        for _ in range(RESERVE_TRIES):
            assignment = self.scheduler.reserve(host)
            if assignment is not None:
                self.stats.check_jobs += 1
                return await self.relay.answer_on(assignment, Work("chat", model, request))
            if host.id not in self.registry.hosts:
                return None
            await asyncio.sleep(RESERVE_WAIT)
        return None

    # verdicts ------------------------------------------------------------------------

    def _verdict(self, host: Host, passed: bool) -> None:
        self.stats.checks += 1
        if not passed:
            self.stats.checks_failed += 1
        was_verified = host.trust.verified
        change = checked(host.trust, self.policy, passed)
        if host.trust.verified != was_verified:
            self.registry.notify()  # the names it serves are established (or no longer)
        if change == "quarantined":
            self._quarantined(host)
        elif not passed and host.trust.quarantined is None:
            self._start_later(host)  # a suspect gets fewer jobs: check it again without waiting for them
        elif change == "released":
            log.info("host.released", host_id=host.id, by="checks")
            self._save(host)
            self.registry.notify()

    def _quarantined(self, host: Host) -> None:
        self.stats.quarantines += 1
        self.registry.notify()
        log.warning("host.quarantined", host_id=host.id, host_name=host.name, reason=host.trust.quarantined)
        self._save(host)

    def _save(self, host: Host) -> None:
        """Written with the next flush (housekeeping), off the request path."""
        self._dirty[host.id] = host.trust

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for host_id, trust in dirty.items():
            await self.store.save_standing(host_id, trust)

    def left(self, host: Host) -> None:
        """A host disconnected: keep its standing for when it comes back."""
        if host.trust.score or host.trust.checks_passed or host.trust.checks_failed:
            self._save(host)

    def release(self, host_id: str) -> None:
        """The admin released the host (its row was already cleared)."""
        host = self.registry.hosts.get(host_id)
        if host is not None:
            release(host.trust)
            log.info("host.released", host_id=host_id, by="admin")
            self.registry.notify()

    async def recheck_quarantined(self) -> None:
        """Periodic: a quarantined host is checked again, so it can earn its way back."""
        for host in list(self.registry.hosts.values()):
            if host.trust.quarantined is not None and not host.checking:
                self._start(host, self._canary(host))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


CHECKER = web.AppKey("checker", Checker)
