"""Answer checks, strikes and quarantine: how a host earns the pool's trust.

A host that is not on a trusted token ("a stranger") has a share of its client jobs
checked on a trusted host, and cannot tell which: the check *is* the client's job,
looked at after the host answered it. How, by the request:

- at temperature 0, a trusted host answers the same request (its start) and the two
  are compared (``standing.similar``);
- at any other temperature, or none, the answer is scored against the model's own
  distribution on a trusted host (``scoring``, ``judge``): how much its opening depends
  on the prompt, whether any stretch of it is one the model would not write, and
  whether it ends where the model could. The verdict is graded: a doubt checks the
  host's next jobs too, and doubts add up (a pass takes half of one off) to a failure
  at ``check_doubts``.

Requests with tools, a schema or log probabilities are not checked (their answers are
not plain text). Hosts with no client traffic (a new host, a quarantined one) get
canaries (canaries.py): recent client requests replayed with fresh seeds.

Rate: a new host has every ``probation_every``-th client job checked until it passed
``check_probation`` checks; then each job is checked with a chance of 1 in
``check_every`` (drawn, so no count tells a host when), a floor that never decays, and
every job while it is in doubt (a strike, a doubtful check). A failed check
quarantines at once; doubts add up to one. A quarantined host gets a canary every
``quarantine_check_interval`` seconds and is released by passing checks. A stranger's
credit waits for the checks (escrow.py): a pass credits what the checked job covered,
a failure voids what was held. Without a trusted host serving the model no check can
be made; strikes still count. Every check task is owned here and awaited at shutdown.
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
from andy_host.coordinator.pool.relay import Answered, Relay
from andy_host.coordinator.pool.scheduler import Scheduler
from andy_host.coordinator.pool.work import Work
from andy_host.coordinator.store.interface import Store
from andy_host.coordinator.trust import escrow
from andy_host.coordinator.trust.canaries import Traffic, canary
from andy_host.coordinator.trust.judge import FAIL, PASS, Next, Verdict, judge
from andy_host.coordinator.trust.scoring import judge_policy, plain_text_chat, score
from andy_host.coordinator.trust.standing import HostTrust, TrustPolicy, checked, release, similar, strike
from andy_host.coordinator.web.requestids import new_id
from andy_host.errors import APIError
from andy_host.protocol import FEATURE_CONTINUE, FEATURE_LOGPROBS, ChatRequest, JobRequest, Message

log = structlog.get_logger("andy_host.checks")

MAX_REFERENCES = 2000
DUPLICATE_MAX_TOKENS = 48  # the reference to a client's answer needs only its start
RESERVE_TRIES = 20  # times a check waits RESERVE_WAIT for a free slot on the host it checks
RESERVE_WAIT = 0.5
SCORING_NEEDS = frozenset({FEATURE_LOGPROBS, FEATURE_CONTINUE})


def deterministic(request: JobRequest) -> bool:
    return isinstance(request, ChatRequest) and request.temperature == 0 and not request.continuation


def next_view(answer: Answered) -> Next | None:
    """The model's view of the next token from a one-token answer: the last entry's
    candidates (a backend may list the echoed prefix before the token it generated).
    An empty answer that stopped is the model stopping: with its end-of-turn token's
    candidates where the backend lists them (llama-server shows that token as ""),
    else simply stopped. Text without log probabilities gives no view."""
    last = answer.logprobs[-1] if answer.logprobs else None
    if not answer.text and answer.finish_reason == "stop":
        return Next(last.top) if last is not None and last.token == "" else Next([], stopped=True)
    return None if last is None else Next(last.top)


class Checker:
    """The relay's observer: strikes, answers to check, checks and their verdicts."""

    def __init__(
        self, registry: Registry, scheduler: Scheduler, relay: Relay, config: CoordinatorConfig, store: Store,
        stats: PoolStats,
    ) -> None:
        self.registry, self.scheduler, self.relay, self.config, self.store = registry, scheduler, relay, config, store
        self.stats = stats
        self.policy = TrustPolicy(config.quarantine_score, config.release_after, doubts=config.check_doubts)
        self.judging = judge_policy(config)
        self.rng = random.Random()
        self.traffic = Traffic(config.check_traffic_kept, config.check_traffic_chars)
        self._references: OrderedDict[tuple[str, str, int], tuple[str, float]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: dict[str, HostTrust] = {}  # standings to write at the next flush
        self._running: dict[str, int] = {}  # checks running, by host id

    # what the relay reports -----------------------------------------------------------

    def strike(self, host: Host, reason: str) -> None:
        self.stats.strikes += 1
        log.warning("host.strike", host_id=host.id, reason=reason, score=host.trust.score + 1)
        if strike(host.trust, self.policy, reason):
            self._quarantined(host)

    def answered(self, host: Host, work: Work, answer: Answered, private: bool) -> None:
        """A client job the host alone answered: keep its shape for canaries, and check
        it when one is due (plain chat only)."""
        request = work.request
        if work.kind != "chat" or not work.continuable or not isinstance(request, ChatRequest):
            return
        if not private and plain_text_chat(request):
            self.traffic.saw(work, request, host.id)
        if host.trusted or not plain_text_chat(request):
            return
        host.trust.jobs_since_check += 1
        if not self._due(host):
            return
        cover = escrow.cover(host)
        self._start(host, self._judged(host, work.model, request, answer), cover)

    def joined(self, host: Host) -> None:
        """A host connected: check it at once while it is new or quarantined."""
        trust = host.trust
        if not host.trusted and (trust.quarantined is not None or trust.checks_passed < self.config.check_probation):
            self._start(host, self._canary(host))

    def _due(self, host: Host) -> bool:
        """Is this job of ``host`` to be checked? Every one while it is in doubt, every
        ``probation_every``-th in probation, else one in ``check_every`` at random; at
        most ``check_parallel`` checks of one host at a time."""
        trust = host.trust
        if self._running.get(host.id, 0) >= self.config.check_parallel:
            return False
        if trust.in_doubt:
            return True
        if trust.checks_passed < self.config.check_probation:
            return trust.jobs_since_check >= self.config.probation_every
        return self.rng.random() * self.config.check_every < 1.0

    # checks --------------------------------------------------------------------------

    def _start(
        self, host: Host, check: Coroutine[Any, Any, Verdict | None], cover: escrow.Cover | None = None,
    ) -> None:
        self._began(host)
        was_quarantined = host.trust.quarantined is not None

        async def run() -> None:
            try:
                verdict = await check
                stale = verdict == PASS and host.trust.quarantined is not None and not was_quarantined
                if verdict is not None and not stale:  # a pass of work from before a quarantine releases nothing
                    self._verdict(host, verdict, cover)
            finally:
                self._ran(host)

        task = asyncio.get_running_loop().create_task(run(), name=f"check-{host.id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _began(self, host: Host) -> None:
        self._count(host, self._running.get(host.id, 0) + 1)

    def _ran(self, host: Host) -> None:
        was_full = host.checks_full
        self._count(host, self._running.get(host.id, 1) - 1)
        if was_full and not host.checks_full:
            self.registry.notify()  # it may take client jobs again

    def _count(self, host: Host, running: int) -> None:
        """Checks of ``host`` running now, and what the host's flags derive from it."""
        if running > 0:
            self._running[host.id] = running
        else:
            self._running.pop(host.id, None)
        host.checking = running > 0
        host.checks_full = running >= self.config.check_parallel

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("check.crashed", error=repr(task.exception()), exc_info=task.exception())

    async def check_now(self, host: Host) -> Verdict | None:
        """Run a canary check of ``host`` and wait for its verdict (the admin's command;
        None: no check could be made)."""
        self._began(host)
        try:
            verdict = await self._canary(host)
        finally:
            self._ran(host)
        if verdict is not None:
            self._verdict(host, verdict, None)
        return verdict

    def _checkable_model(self, host: Host) -> str | None:
        """A chat model of the host that a trusted host serves too."""
        counts, own = self.registry.trusted_by_model, 1 if host.trusted else 0
        models = [name for name in host.models if counts.get(name, 0) > own]
        return self.rng.choice(sorted(models)) if models else None

    async def _canary(self, host: Host) -> Verdict | None:
        model = self._checkable_model(host)
        if model is None:
            return None
        request = canary(self.rng, self.traffic, model, host.id, self.config.check_max_tokens)
        answer = await self._on_host(host, model, request)
        if answer is None:
            return None  # it failed: the relay's health accounting already saw that
        return await self._judged(host, model, request, answer, "canary")

    async def _judged(
        self, host: Host, model: str, request: ChatRequest, answer: Answered, how: str = "client job",
    ) -> Verdict | None:
        """The verdict on ``answer`` to ``request``, from a trusted host."""
        if model not in host.models or self.registry.trusted_by_model.get(model, 0) < 1:
            return None
        if deterministic(request):
            return await self._duplicate(host, model, request, answer.text, how)
        evidence = await score(lambda messages: self._next_token(host, model, messages), request,
                               answer.text, answer.finish_reason, self.judging)
        if evidence is None:
            return None
        verdict = judge(evidence, self.judging)
        log.info("check.done", host_id=host.id, model=model, how=how, verdict=verdict,
                 temperature=request.temperature, **evidence.summary())
        return verdict

    async def _duplicate(self, host: Host, model: str, request: ChatRequest, text: str, how: str) -> Verdict | None:
        again = replace(request, stream=False,
                        max_tokens=min(request.max_tokens or DUPLICATE_MAX_TOKENS, DUPLICATE_MAX_TOKENS))
        reference = await self._reference(host, model, again) if how == "canary" else await self._on_trusted(
            host, model, again)
        if reference is None:
            return None
        agrees = similar(reference, text)
        log.info("check.done", host_id=host.id, model=model, how=how, temperature=0, passed=agrees,
                 reference=reference[:80], answer=text[:80])
        return None if agrees is None else (PASS if agrees else FAIL)

    async def _next_token(self, host: Host, model: str, messages: list[Message]) -> Next | None:
        """A trusted host's top candidates for the token after ``messages`` (the last an
        assistant's partial answer, or none yet)."""
        partial = bool(messages) and messages[-1].role == "assistant"
        request = ChatRequest(messages=messages, continuation=partial, max_tokens=1, temperature=0.0,
                              logprobs=True, top_logprobs=self.config.check_top_logprobs, stream=False)
        answer = await self._run_trusted(host, model, request, SCORING_NEEDS)
        return None if answer is None else next_view(answer)

    async def _reference(self, host: Host, model: str, request: ChatRequest) -> str | None:
        """A trusted host's answer to a temperature-0 canary (kept for ``reference_ttl``)."""
        key = (model, "\n".join(m.content for m in request.messages), request.max_tokens or 0)
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
        answer = await self._run_trusted(host, model, request, frozenset())
        return None if answer is None else answer.text

    async def _run_trusted(
        self, host: Host, model: str, request: ChatRequest, needs: frozenset[str],
    ) -> Answered | None:
        try:
            assignment = await self.scheduler.acquire(model, {host.conn}, self.config.queue_timeout, "chat",
                                                      "checks", needs, trusted_only=True)
        except APIError:
            return None
        self.stats.check_jobs += 1
        return await self.relay.answer_on(assignment, Work("chat", model, request, needs), new_id())

    async def _on_host(self, host: Host, model: str, request: ChatRequest) -> Answered | None:
        for _ in range(RESERVE_TRIES):
            assignment = self.scheduler.reserve(host)
            if assignment is not None:
                self.stats.check_jobs += 1
                return await self.relay.answer_on(assignment, Work("chat", model, request), new_id())
            if host.id not in self.registry.hosts:
                return None
            await asyncio.sleep(RESERVE_WAIT)
        return None

    # verdicts ------------------------------------------------------------------------

    def _verdict(self, host: Host, verdict: Verdict, cover: escrow.Cover | None) -> None:
        self.stats.checks += 1
        if verdict == FAIL:
            self.stats.checks_failed += 1
        was_verified = host.trust.verified
        failures = host.trust.checks_failed
        change = checked(host.trust, self.policy, verdict)
        failed = host.trust.checks_failed > failures  # a failure, or doubts that added up to one
        if verdict == PASS and cover is not None:
            escrow.settle(host, cover, passed=True)
        elif failed:
            escrow.settle(host, escrow.cover(host), passed=False)
        if host.trust.verified != was_verified:
            self.registry.notify()  # the names it serves are established (or no longer)
        if change == "quarantined":  # a failure always quarantines (standing.checked)
            self._quarantined(host)
        elif change == "released":
            log.info("host.released", host_id=host.id, by="checks")
            self._save(host)
            self.registry.notify()

    def _quarantined(self, host: Host) -> None:
        escrow.forfeit(host)
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
