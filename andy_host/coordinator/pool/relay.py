"""Running one job on the pool: reserve a host, push the job, relay its events back.

Before any content: a host that fails (5xx, connection error, disconnect) or stays
silent past ``ttft_timeout`` is abandoned and the job goes to another host. A
non-streamed answer is asked of the backend in one piece, so its host has
``answer_timeout`` for all of it. After content: a lost host, a stall past
``token_timeout``, a cut stream or a malformed chunk continues the answer on another
host that can continue a final assistant message, the partial answer sent as that
prefix (the host strips any echo of it). Where no host can, :class:`StreamBroken` is
raised and the client gets an explicit error, never a truncated success. The
continuation is asked for ``max_tokens`` less what the earlier hosts generated: each
one's own count (the ``tokens`` its chunks carry) where plausible for the text it
relayed, else the fewest tokens that spell that text (``trust.generated_tokens``), so
a rescued answer is as long as an uninterrupted one, never shorter; its
``usage.completion_tokens`` counts the same tokens.

A failover waits for a slot (the fair queue, at most ``queue_timeout`` and the
request's deadline) only while another connected host could take the job and is busy.
When no connected host but those tried could (``Scheduler.candidates``), the last
attempt's error goes to the client at once, nobody waits for a host to connect: a
context overflow as 400 ``context_length_exceeded``, a silence as 504 ``timeout``, a
failure after content as :class:`StreamBroken`. A host that rejects a request (4xx)
is tried once more elsewhere, to learn whether it is the request or the host (the
host gets a strike if another answers); with no other host, its rejection is the
answer, without a strike.

Only content is progress: empty chunks do not hold a job past its timers. An answer
is held to the pool's bounds (``bounds.Bound``: size, tool calls, log probabilities,
token counts; the same rule the replica hop applies): a host past a bound is struck,
and cut off where the answer cannot go on. Events wait for the client in a bounded
queue: a client that does not read has its job cancelled. Every attempt is bounded by
``max_attempts`` and the whole request by its deadline: ``request_timeout`` from when
it entered, computed once by whoever took the request in and passed down (``run``'s
``deadline``), never started again here. What each event means is decided by the pure
:func:`classify`; the coroutines around it only wait and move text.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog
from aiohttp import web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts.health import HealthPolicy
from andy_host.coordinator.hosts.registry import Assignment, Host, HostLost, JobEvent
from andy_host.coordinator.observe.stats import PoolStats
from andy_host.coordinator.pool.bounds import Bound, Breach, most_prompt_tokens, request_deadline
from andy_host.coordinator.pool.events import JobEvents, Overflow
from andy_host.coordinator.pool.scheduler import Scheduler
from andy_host.coordinator.pool.work import Work, prompt_chars, with_context
from andy_host.coordinator.trust import escrow
from andy_host.coordinator.trust.standing import generated_tokens
from andy_host.errors import (
    CONTEXT_EXCEEDED,
    APIError,
    StreamBroken,
    backend_error,
    context_exceeded,
    says_context_exceeded,
    timeout_error,
)
from andy_host.protocol import FEATURE_CONTINUE, Cancel, Chunk, Done, JobError, TokenLogprob, encode, encode_job

log = structlog.get_logger("andy_host.relay")

MIN_SPEED_SPAN = 0.01  # seconds of generation below which an answer says nothing about speed


class Restart:
    """Yielded to a non-streaming caller: discard the partial text, it starts over."""


RESTART = Restart()
# What a failover says about the host: it failed, it was slow, nothing (it was busy or
# cannot continue), or it rejected the request (a strike if another host accepts it).
Blame = Literal["failed", "slow", "none", "rejected"]


@dataclass(frozen=True, slots=True)
class Failover:
    """The attempt is over without an answer; another host may try."""

    error: APIError
    blame: Blame
    cannot_continue: bool = False  # the host refused a continuation (it cannot continue)
    retry_after: float | None = None  # the backend asked for a pause: the host cools down
    prompt_tokens: int | None = None  # a context overflow: the prompt's tokens, as the backend counted them
    context_tokens: int | None = None  # ... and the context it had for them


@dataclass(frozen=True, slots=True)
class Abort:
    """The request is over: no other host can help (a client error, or a client that
    does not read)."""

    error: APIError


Action = Chunk | Done | Failover | Abort


def classify(event: JobEvent | Overflow, continuing: bool) -> Action:
    """What one event from a host means for the job (pure)."""
    if isinstance(event, (Chunk, Done)):
        return event
    if isinstance(event, Overflow):
        return Abort(APIError(502, "The client did not read the answer fast enough; the job was cancelled.",
                              type="server_error", code="client_too_slow"))
    if isinstance(event, HostLost):
        return Failover(APIError(502, f"Host lost: {event.reason}", type="server_error", code="host_lost"), "failed")
    context = event.code == CONTEXT_EXCEEDED or (event.status == 400 and says_context_exceeded(event.message))
    # of a host's words, only a context overflow's counts (integers) reach the client
    error = backend_error(event.status, CONTEXT_EXCEEDED if context else event.code,
                          event.prompt_tokens, event.context_tokens)
    if continuing and 400 <= event.status < 500 and event.status != 429 and not context:
        return Failover(error, "none", cannot_continue=True)
    if event.status < 500 and event.status not in (408, 429):
        # tried once more elsewhere: is it the request, or the host? (a host that claims a
        # context overflow is not believed either: a lie would cut off every long chat)
        return Failover(error, "rejected", prompt_tokens=event.prompt_tokens if context else None,
                        context_tokens=event.context_tokens if context else None)
    blamed: Blame = "none" if event.status == 429 or (event.status == 503 and event.retry_after) else "failed"
    return Failover(error, blamed, retry_after=event.retry_after)


@dataclass(slots=True)
class Answer:
    """The answer so far, across every host that worked on it, as relayed."""

    parts: list[str]
    chars: int = 0
    chunks: int = 0
    clear_restarts: int = 0  # times a non-streamed answer started over
    earlier: int = 0  # tokens generated by the hosts before the current one
    host_chars: int = 0  # characters the current host relayed
    host_tokens: int = 0  # tokens the current host says they took (its chunks' ``tokens``)

    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: Chunk) -> None:
        self.parts.append(chunk.content)
        self.chars += len(chunk.content)
        self.chunks += 1
        self.host_chars += len(chunk.content)
        self.host_tokens += chunk.tokens

    def next_host(self) -> None:
        """Another host takes the answer over: the last one's part is counted apart."""
        self.earlier = self.tokens()
        self.host_chars = self.host_tokens = 0

    def clear(self) -> None:
        self.parts.clear()
        self.chars = self.chunks = self.earlier = self.host_chars = self.host_tokens = 0
        self.clear_restarts += 1

    def tokens(self) -> int:
        """Tokens generated for the answer so far: each host's own count of its part
        where plausible for its text, else the fewest tokens that spell it
        (:func:`generated_tokens`). A continuation is asked for ``max_tokens`` less
        these, so a rescued answer is as long as an uninterrupted one, never shorter."""
        return self.earlier + generated_tokens(self.host_tokens, self.host_chars)


class Observer(Protocol):
    """Who hears about hosts' conduct (the checker: strikes, checks, quarantine)."""

    def strike(self, host: Host, reason: str) -> None: ...

    def answered(self, host: Host, work: Work, answer: Answered, private: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Answered:
    """A whole answer as one host gave it: its text, how it ended, its log probabilities."""

    text: str
    finish_reason: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


class _Nobody:
    def strike(self, host: Host, reason: str) -> None:
        log.warning("host.strike", host_id=host.id, reason=reason)

    def answered(self, host: Host, work: Work, answer: Answered, private: bool) -> None:
        pass


@dataclass(slots=True)
class _Job:
    """One client request across its attempts."""

    work: Work
    client: str
    stream: bool
    on_stall: Callable[[], None] | None
    trusted_only: bool
    trace: str | None
    deadline: float  # the loop's time by which the request is over
    prompt: int  # characters of prompt
    answer: Answer = field(default_factory=lambda: Answer([]))
    tried: set[int] = field(default_factory=set)  # connections tried
    last_error: APIError | None = None
    failures: int = 0
    rejected: list[Host] = field(default_factory=list)  # hosts that answered 4xx
    counts: list[int] = field(default_factory=list)  # prompt tokens each host that said they do not fit counted

    def context(self) -> int:
        """The prompt's tokens as far as two of the hosts that said it does not fit agree
        (the second-largest count): one host's count alone decides nothing."""
        return sorted(self.counts)[-2] if len(self.counts) > 1 else 0

    def failure(self, request_timeout: float) -> APIError:
        """What the client is told when no attempt succeeded."""
        if self.answer.parts:
            return StreamBroken(
                "the host serving this answer failed and no other host could continue it"
                + (f" ({self.last_error.message})" if self.last_error else "")
            )
        if self.last_error is not None:
            return self.last_error
        return timeout_error(f"the request did not complete within {request_timeout:.0f}s")


class Relay:
    def __init__(self, scheduler: Scheduler, config: CoordinatorConfig, stats: PoolStats) -> None:
        self.scheduler = scheduler
        self.config = config
        self.stats = stats
        self.policy = HealthPolicy(config.eject_after, config.eject_base, config.eject_max)
        self.observer: Observer = _Nobody()
        self._cancels: set[asyncio.Task[None]] = set()  # cancel frames on their way to hosts

    # health -------------------------------------------------------------------------

    def _failed(self, host: Host, model: str, slow: bool) -> None:
        host.failures += 1
        last = len(self.scheduler.registry.by_model.get(model, ())) <= 1
        if host.health.record_failure(time.monotonic(), self.policy, slow=slow, last_host=last):
            self.stats.ejections += 1
            log.warning("host.ejected", host_id=host.id, offences=host.health.offences)

    def _succeeded(self, assignment: Assignment, done: Done, stream: bool, tokens: int, credit: bool) -> None:
        """Count the success and learn the host's speed from it (measured tokens only).

        A stream gives time to first token and tokens/s after it, but only when its
        tokens arrived over at least ``MIN_SPEED_SPAN`` (an answer that came in one
        burst says nothing about speed). A whole answer gives tokens/s over the whole
        job, prompt included, and no time to first token. Only client jobs (``credit``)
        count towards the ledger.
        """
        host = assignment.host
        now = time.monotonic()
        if credit:  # a stranger's credit waits for an answer check (escrow.py)
            escrow.earn(host, tokens, checkable=self.scheduler.registry.checkable(host))
        ttft = tps = None
        if not stream:
            if tokens > 0 and now - assignment.sent_at >= MIN_SPEED_SPAN:
                tps = tokens / (now - assignment.sent_at)
        elif assignment.first_token_at is not None:
            ttft = assignment.first_token_at - assignment.sent_at
            if tokens > 1 and now - assignment.first_token_at >= MIN_SPEED_SPAN:
                tps = (tokens - 1) / (now - assignment.first_token_at)
        host.health.record_speed(ttft, tps)
        host.health.record_success(self.policy)

    def _blame(self, assignment: Assignment, model: str, failover: Failover) -> None:
        host = assignment.host
        self.stats.failovers += 1
        if failover.retry_after:
            host.health.cool_down(time.monotonic(), failover.retry_after)
        if failover.cannot_continue:
            host.features.discard(FEATURE_CONTINUE)  # recorded: it cannot continue
            host.features_lost.add(FEATURE_CONTINUE)
        elif failover.blame in ("failed", "slow"):  # a rejection counts only once another host answers
            self._failed(host, model, slow=failover.blame == "slow")

    def _cancel_on_host(self, host: Host, job_id: str) -> None:
        async def send() -> None:
            try:
                await host.send(encode(Cancel(id=job_id)))
            except (ConnectionError, RuntimeError) as exc:  # the host is gone already
                log.debug("job.cancel_not_sent", host_id=host.id, job_id=job_id, error=str(exc))

        task = asyncio.get_running_loop().create_task(send())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def close(self) -> None:
        """Wait for the cancel frames still on their way (at shutdown)."""
        if self._cancels:
            await asyncio.gather(*self._cancels, return_exceptions=True)

    # the request ----------------------------------------------------------------------

    async def run(
        self,
        work: Work,
        client: str = "",
        stream: bool = True,
        on_stall: Callable[[], None] | None = None,
        trusted_only: bool = False,
        trace: str | None = None,
        deadline: float | None = None,
    ) -> AsyncGenerator[Chunk | Done | Restart, None]:
        """Yield content chunks, then the final ``Done``; raise APIError (StreamBroken
        after content was sent). ``on_stall`` is called when the client stops reading
        while the host keeps sending (the caller ends the client's connection);
        ``trusted_only`` keeps the job on hosts with a trusted token; ``trace`` (the
        request's id) goes to the host with the job, for its logs. ``deadline`` (the
        loop's time) is the request's, where the caller took it in; without one the
        request enters here (``request_deadline``).

        With ``stream=False`` a failure after content may also restart the answer from
        scratch on a host that cannot continue; ``RESTART`` tells the caller to discard.
        """
        loop = asyncio.get_running_loop()
        job = _Job(work, client, stream, on_stall, trusted_only, trace,
                   deadline=request_deadline(self.config) if deadline is None else deadline,
                   prompt=prompt_chars(work))
        self.stats.requests += 1
        for attempt in range(1, self.config.max_attempts + 1):
            if job.deadline <= loop.time():
                break
            if job.answer.parts and not self._continuable(job):
                if stream:
                    break  # content went out and cannot be continued: an explicit error
                job.answer.clear()  # nobody can continue it: a non-stream answer starts over
                yield RESTART
            assignment = await self._acquire(job)
            if assignment is None:
                break
            async for item in self._try(job, assignment, attempt):
                yield item
                if isinstance(item, Done):
                    return
        self.stats.failed += 1
        raise job.failure(self.config.request_timeout)

    def _continuable(self, job: _Job) -> bool:
        work = job.work
        return work.continuable and bool(self.scheduler.candidates(
            work.model, job.tried, work.kind, work.continue_needs(), job.trusted_only))

    async def _acquire(self, job: _Job) -> Assignment | None:
        """A slot for the next attempt; None when there is no point in another.

        A failover waits in the queue only while another connected host could take the
        job (it is busy); with none, the scheduler says so at once and the last
        attempt's error is the client's, without waiting for a host to connect.

        After a context overflow only hosts that serve what the backends counted are
        asked: what two hosts that rejected it agree the prompt is at least, or one
        host's count while some host is left that serves it (one host's word alone
        never keeps a prompt from every other host: a lie would fail honest prompts,
        and, nobody answering them, never cost the liar a strike)."""
        remaining = job.deadline - asyncio.get_running_loop().time()
        work = job.work
        plain = work.continue_needs() if job.answer.parts else work.needs
        needs = with_context(plain, job.context())
        if len(job.counts) == 1:  # one host's count: a hint, never what keeps the prompt from every other host
            hinted = with_context(plain, job.counts[0])
            if self.scheduler.candidates(work.model, job.tried, work.kind, hinted, job.trusted_only):
                needs = hinted
        try:
            assignment = await self.scheduler.acquire(
                work.model, job.tried, min(self.config.queue_timeout, remaining), work.kind, job.client, needs,
                trusted_only=job.trusted_only,
            )
        except APIError:
            if job.last_error is not None or job.answer.parts:
                return None
            raise
        job.tried.add(assignment.host.conn)
        assignment.events.on_overflow = job.on_stall
        return assignment

    async def _try(self, job: _Job, assignment: Assignment, attempt: int) -> AsyncGenerator[Chunk | Done, None]:
        """One attempt of ``job``: relay its content; on Done, the job's end."""
        host, answer = assignment.host, job.answer
        frame = self._job_frame(assignment, job)
        if frame is None:  # the continuation would not fit in a frame: nobody can take it
            self.scheduler.release(assignment)
            job.last_error = job.last_error or StreamBroken("the answer is too long to continue on another host")
            return
        bound = log.bind(job_id=assignment.id, request_id=job.trace, host_id=host.id, model=job.work.model,
                         attempt=attempt)
        answer.next_host()
        before = answer.earlier  # tokens already generated by earlier hosts
        if answer.parts:
            self.stats.continued += 1
            bound.info("job.continuing", prefix_chars=answer.chars, prefix_tokens=before)
        outcome = self._attempt(assignment, job, frame)
        try:
            async for item in outcome:
                if isinstance(item, Chunk):
                    answer.add(item)
                    yield item
                elif isinstance(item, Done):
                    self._finish(job, assignment, item, before, bound)
                    yield item
                    return
                else:
                    self._failover(job, assignment, item, bound)
        finally:
            await outcome.aclose()

    def _finish(self, job: _Job, assignment: Assignment, done: Done, before: int, bound: Any) -> None:
        for liar in job.rejected:
            if not _too_small(liar, job.work.model, done):
                self.observer.strike(liar, "rejected a request that another host answered")
        if job.failures:
            self.stats.rescued += 1
        self.stats.completed += 1
        done.usage["completion_tokens"] = done.usage.get("completion_tokens", 0) + before
        if not job.failures and not job.answer.clear_restarts:
            self.observer.answered(assignment.host, job.work, Answered(job.answer.text(), done.finish_reason),
                                   job.trusted_only)
        # logged once the answer is on its way, not before
        asyncio.get_running_loop().call_soon(functools.partial(
            bound.info, "job.done", finish_reason=done.finish_reason, failovers=job.failures
        ))

    def _failover(self, job: _Job, assignment: Assignment, failover: Failover, bound: Any) -> None:
        job.failures += 1
        job.last_error = failover.error
        self._blame(assignment, job.work.model, failover)
        bound.warning("job.failover", reason=failover.error.message, content_sent=bool(job.answer.parts))
        if failover.blame == "rejected":
            if failover.error.code == CONTEXT_EXCEEDED:  # hosts with room for it are tried next
                counted = self._believed_prompt(job, failover.prompt_tokens)
                job.counts.append(counted)
                # the client is told the count as believed, not a host's unbounded one
                job.last_error = context_exceeded(failover.context_tokens, counted or None)
                if job.rejected and not self._roomier(job, assignment.host):
                    raise job.last_error  # a second host agrees, and none left serves more
            elif job.rejected:  # a second host rejects it too: it is the request
                raise failover.error
            job.rejected.append(assignment.host)

    def _roomier(self, job: _Job, host: Host) -> bool:
        """Is a host left to try that serves a larger context than every host that said
        the prompt does not fit (so it might hold it)?"""
        model = job.work.model
        served = [info.served_context or 0 for h in (*job.rejected, host) if (info := h.models.get(model))]
        largest = max(served, default=0)
        return any((h.models[model].served_context or 0) > largest
                   for h in self.scheduler.candidates(model, job.tried, job.work.kind, frozenset(), job.trusted_only))

    @staticmethod
    def _believed_prompt(job: _Job, counted: int | None) -> int:
        """A backend's count of the prompt's tokens, at most what its characters can be."""
        if counted is None:
            return 0
        return min(counted, most_prompt_tokens(job.prompt))

    def _job_frame(self, assignment: Assignment, job: _Job) -> str | None:
        """The job frame for this attempt; None when a continuation would exceed the frame limit."""
        answer, work = job.answer, job.work
        body = work.continued(answer.text(), answer.tokens()) if answer.parts else work.request
        budget = job.deadline - asyncio.get_running_loop().time()
        frame = encode_job(assignment.id, work.kind, work.model, body, max(budget, 0.001), job.trace)
        if answer.parts and len(frame.encode()) > self.config.max_frame_bytes:
            log.warning("job.prefix_too_large", job_id=assignment.id, prefix_chars=answer.chars)
            return None
        return frame

    async def _attempt(
        self, assignment: Assignment, job: _Job, frame: str, credit: bool = True,
    ) -> AsyncGenerator[Chunk | Done | Failover, None]:
        """One host's try: content, then Done; or a Failover to try another host.

        Raises APIError when the request cannot succeed anywhere (a client error, a
        client that does not read, an answer past its bound).
        """
        host = assignment.host
        bound = Bound.of(self.config, job.work, functools.partial(self.observer.strike, host), job.answer.chars)
        try:
            assignment.sent_at = time.monotonic()
            try:
                await host.send(frame)
            except (ConnectionError, RuntimeError) as exc:  # the host's socket closed just now
                yield Failover(APIError(502, f"Host lost: {exc}", type="server_error", code="host_lost"), "failed")
                return
            events = self._events(assignment, job.deadline, bool(job.answer.parts), job.stream)
            async with aclosing(events):
                async for action in events:
                    if isinstance(action, Abort):
                        raise action.error
                    if isinstance(action, Chunk):
                        self._bound_chunk(bound, assignment, job.work.model, action)
                    elif isinstance(action, Done):  # its counts measured, then believed
                        self._succeeded(assignment, action, job.stream, bound.done(action), credit)
                    yield action
        finally:
            self.scheduler.release(assignment)
            if not assignment.finished:  # the host may still be working on it
                self._cancel_on_host(host, assignment.id)

    def _bound_chunk(self, bound: Bound, assignment: Assignment, model: str, chunk: Chunk) -> None:
        """``chunk`` held to the answer's bounds (the host struck for each it breaks; an
        answer past its size is a failure of the host too)."""
        try:
            bound.chunk(chunk)
        except Breach as breach:
            if breach.failed:
                self._failed(assignment.host, model, slow=False)
            raise

    async def answer_on(self, assignment: Assignment, work: Work, trace: str | None = None) -> Answered | None:
        """One job on the host ``assignment`` holds, whole (an answer check, or a step of
        scoring one): the answer, or None when it failed. Not counted as client work.
        The frame is built as any client's is (``trace`` as a request id would be)."""
        job = _Job(work, "", work.stream, None, False, trace,
                   deadline=request_deadline(self.config), prompt=prompt_chars(work))
        frame = self._job_frame(assignment, job)
        assert frame is not None
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        try:
            async with aclosing(self._attempt(assignment, job, frame, credit=False)) as outcome:
                async for item in outcome:
                    if isinstance(item, Chunk):
                        parts.append(item.content)
                        logprobs.extend(item.logprobs or ())
                    elif isinstance(item, Done):
                        logprobs.extend(item.logprobs or ())
                        return Answered("".join(parts), item.finish_reason, logprobs)
                    else:
                        return None
        except APIError:
            return None
        return None

    async def _events(
        self, assignment: Assignment, deadline: float, continuing: bool, stream: bool,
    ) -> AsyncGenerator[Action, None]:
        """Classified events of one attempt, ending with its last (Done, Failover or
        Abort); chunks already queued are merged into one, and a silence past the
        timers becomes a slow failover. Only content resets the timers."""
        config, loop = self.config, asyncio.get_running_loop()
        events, host = assignment.events, assignment.host
        sent = loop.time()
        progress: float | None = None  # when content last arrived
        while True:
            if not stream:
                until, what = sent + config.answer_timeout, "for a whole answer"
            elif progress is None:
                until, what = sent + config.ttft_timeout, "before the first token"
            else:
                until, what = progress + config.token_timeout, "between tokens"
            try:
                async with asyncio.timeout_at(min(until, deadline)):
                    event = await events.get()
            except TimeoutError:
                waited = loop.time() - (progress if progress is not None else sent)
                log.info("job.host_silent", job_id=assignment.id, host_id=host.id, waited=round(waited, 1), what=what)
                if stream:
                    message = f"the host sent no content for {waited:.1f}s {what}"
                else:  # a whole answer shows nothing until it is done: a long one looks like a silent host
                    message = (f"the answer was not complete after {waited:.1f}s (the pool's answer_timeout): "
                               "ask with stream: true to see it as it comes, or bound it with max_tokens")
                yield Failover(timeout_error(message), "slow")
                return
            if isinstance(event, (Done, JobError)):
                assignment.finished = True  # the host's work on it is over
            if isinstance(event, JobError):  # the host's own words go to the log, never to a client
                log.info("job.host_error", job_id=assignment.id, host_id=host.id, status=event.status,
                         code=event.code, message=event.message[:300])
            action = classify(event, continuing)
            if isinstance(action, Chunk):
                action = _merge(action, events)
            elif isinstance(action, Done) and action.content:  # the last content came with the end
                action, tail = Chunk(id=action.id, content=action.content, tokens=0, logprobs=action.logprobs), action
                tail.content, tail.logprobs = "", None
                yield self._progress(assignment, action, progress is None)
                yield tail
                return
            if not isinstance(action, Chunk):
                yield action
                return
            if action.content:  # an empty or role-only chunk is not progress
                yield self._progress(assignment, action, progress is None)
                progress = loop.time()

    @staticmethod
    def _progress(assignment: Assignment, chunk: Chunk, first: bool) -> Chunk:
        if first:
            assignment.first_token_at = time.monotonic()
        return chunk


def _too_small(host: Host, model: str, done: Done) -> bool:
    """Did ``host`` serve a context too small for the prompt another host answered (an
    honest context overflow, no strike)?"""
    info = host.models.get(model)
    served = info.served_context if info is not None else None
    return served is not None and served < done.usage.get("prompt_tokens", 0)


def _merge(first: Chunk, events: JobEvents[JobEvent]) -> Chunk:
    """``first`` and the chunks queued right behind it, as one (a burst costs one SSE event)."""
    if events.empty() or not isinstance(events.peek(), Chunk):
        return first
    parts, count, logprobs = [first.content], first.tokens, first.logprobs
    while not events.empty() and isinstance(events.peek(), Chunk):
        more = events.get_nowait()
        assert isinstance(more, Chunk)
        parts.append(more.content)
        count += more.tokens
        if more.logprobs:
            logprobs = (logprobs or []) + more.logprobs
    return Chunk(id=first.id, content="".join(parts), tokens=count, logprobs=logprobs)


RELAY = web.AppKey("relay", Relay)
