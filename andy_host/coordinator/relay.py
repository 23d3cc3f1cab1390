"""Running one job on the pool: reserve a host, push the job, relay its events back.

Before any content: a host that fails (5xx, connection error, disconnect) or stays
silent past ``ttft_timeout`` is abandoned and the job goes to another host. A
non-streamed answer is asked of the backend in one piece, so its host has
``answer_timeout`` for all of it. After content: a lost host, a stall past
``token_timeout``, a cut stream or a malformed chunk continues the answer on another
host that can continue a final assistant message, the partial answer sent as that
prefix (the host strips any echo of it). Where no host can, :class:`StreamBroken` is
raised and the client gets an explicit error, never a truncated success.

Only content is progress: empty chunks do not hold a job past its timers. An answer
is bounded (``max_answer_chars``, less when ``max_tokens`` is set): a host past the
bound is cut off. Events wait for the client in a bounded queue: a client that does
not read has its job cancelled. Every attempt is bounded by ``max_attempts`` and the
whole request by ``request_timeout``. What each event means is decided by the pure
:func:`classify`; the coroutines around it only wait and move text.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.events import JobEvents, Overflow
from andy_host.coordinator.health import HealthPolicy
from andy_host.coordinator.hosts import Assignment, Host, HostLost, JobEvent
from andy_host.coordinator.scheduler import Scheduler
from andy_host.coordinator.stats import PoolStats
from andy_host.errors import (
    CONTEXT_EXCEEDED,
    APIError,
    StreamBroken,
    backend_error,
    says_context_exceeded,
    timeout_error,
)
from andy_host.protocol import FEATURE_CONTINUE, Cancel, Chunk, Done, JobError, JobKind, encode, encode_job

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
    error = backend_error(event.status, CONTEXT_EXCEEDED if context else event.code)
    if context:
        return Abort(error)  # the prompt does not fit: no other host of the model would differ
    if continuing and 400 <= event.status < 500 and event.status != 429:
        return Failover(error, "none", cannot_continue=True)
    if event.status < 500 and event.status not in (408, 429):
        return Failover(error, "rejected")  # tried once more elsewhere: is it the request, or the host?
    blamed: Blame = "none" if event.status == 429 or (event.status == 503 and event.retry_after) else "failed"
    return Failover(error, blamed, retry_after=event.retry_after)


def answer_limit(config: CoordinatorConfig, request: dict[str, Any]) -> int:
    """Most characters of answer this request may get."""
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, int):
        return min(config.max_answer_chars, max(max_tokens * config.answer_chars_per_token, 4096))
    return config.max_answer_chars


def _continuation(request: dict[str, Any], partial: str, tokens: int) -> dict[str, Any]:
    messages = [*request["messages"], {"role": "assistant", "content": partial}]
    follow = {**request, "messages": messages, "continuation": True}
    if "max_tokens" in request:
        follow["max_tokens"] = max(1, request["max_tokens"] - tokens)
    return follow


@dataclass(slots=True)
class Answer:
    """The answer so far, across every host that worked on it."""

    parts: list[str]
    chars: int = 0
    tokens: int = 0

    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: Chunk) -> None:
        self.parts.append(chunk.content)
        self.chars += len(chunk.content)
        self.tokens += chunk.tokens

    def clear(self) -> None:
        self.parts.clear()
        self.chars = self.tokens = 0


class Relay:
    def __init__(self, scheduler: Scheduler, config: CoordinatorConfig, stats: PoolStats) -> None:
        self.scheduler = scheduler
        self.config = config
        self.stats = stats
        self.policy = HealthPolicy(config.eject_after, config.eject_base, config.eject_max)
        self._cancels: set[asyncio.Task[None]] = set()  # cancel frames on their way to hosts

    # health -------------------------------------------------------------------------

    def _failed(self, host: Host, model: str, slow: bool) -> None:
        host.failures += 1
        last = len(self.scheduler.registry.by_model.get(model, ())) <= 1
        if host.health.record_failure(time.monotonic(), self.policy, slow=slow, last_host=last):
            self.stats.ejections += 1
            log.warning("host.ejected", host_id=host.id, offences=host.health.offences)

    def _succeeded(self, assignment: Assignment, done: Done, stream: bool) -> None:
        """Count the success and learn the host's speed from it.

        A stream gives time to first token and tokens/s after it, but only when its
        tokens arrived over at least ``MIN_SPEED_SPAN`` (an answer that came in one
        burst says nothing about speed). A whole answer gives tokens/s over the whole
        job, prompt included, and no time to first token.
        """
        host = assignment.host
        now = time.monotonic()
        host.served += 1
        tokens = done.usage.get("completion_tokens", 0)
        host.tokens += tokens
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
        elif failover.blame != "none":
            self._failed(host, model, slow=failover.blame == "slow")

    def _strike(self, host: Host, reason: str) -> None:
        host.strikes += 1
        log.warning("host.strike", host_id=host.id, reason=reason, strikes=host.strikes)

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
        kind: JobKind,
        model: str,
        request: dict[str, Any],
        client: str = "",
        stream: bool = True,
        on_stall: Callable[[], None] | None = None,
    ) -> AsyncGenerator[str | Done | Restart, None]:
        """Yield content strings, then the final ``Done``; raise APIError (StreamBroken
        after content was sent). ``on_stall`` is called when the client stops reading
        while the host keeps sending (the caller ends the client's connection).

        With ``stream=False`` a failure after content may also restart the answer from
        scratch on a host that cannot continue; ``RESTART`` tells the caller to discard.
        """
        config, loop = self.config, asyncio.get_running_loop()
        deadline = loop.time() + config.request_timeout
        self.stats.requests += 1
        tried: set[int] = set()
        answer = Answer([])
        limit = answer_limit(config, request)
        last_error: APIError | None = None
        failures = 0
        rejected: list[Host] = []  # hosts that answered 4xx: struck if another host accepts
        for attempt in range(1, config.max_attempts + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            need = FEATURE_CONTINUE if answer.parts else None
            if answer.parts and not stream and not self.scheduler.candidates(model, tried, kind, need):
                answer.clear()  # nobody can continue it: a non-stream answer starts over
                need = None
                yield RESTART
            try:
                assignment = await self.scheduler.acquire(
                    model, tried, min(config.queue_timeout, remaining), kind, client, need,
                    await_hosts=attempt > 1,
                )
            except APIError:
                if last_error is not None or answer.parts:
                    break
                raise
            host = assignment.host
            tried.add(host.conn)
            assignment.events.on_overflow = on_stall
            frame = self._job_frame(assignment, kind, model, request, answer, deadline - loop.time())
            if frame is None:  # the continuation would not fit in a frame: nobody can take it
                self.scheduler.release(assignment)
                break
            bound = log.bind(job_id=assignment.id, host_id=host.id, model=model, attempt=attempt)
            if answer.parts:
                self.stats.continued += 1
                bound.info("job.continuing", prefix_chars=answer.chars)
            before = answer.tokens  # tokens already delivered by earlier hosts
            outcome = self._attempt(
                assignment, model, frame, deadline, bool(answer.parts), stream, limit - answer.chars
            )
            try:
                async for item in outcome:
                    if isinstance(item, Chunk):
                        answer.add(item)
                        yield item.content
                    elif isinstance(item, Done):
                        for liar in rejected:
                            self._strike(liar, "rejected a request that another host answered")
                        if failures:
                            self.stats.rescued += 1
                        self.stats.completed += 1
                        item.usage["completion_tokens"] = item.usage.get("completion_tokens", 0) + before
                        # logged once the answer is on its way, not before
                        loop.call_soon(functools.partial(
                            bound.info, "job.done", finish_reason=item.finish_reason, failovers=failures
                        ))
                        yield item
                        return
                    else:
                        failures += 1
                        last_error = item.error
                        self._blame(assignment, model, item)
                        bound.warning("job.failover", reason=item.error.message, content_sent=bool(answer.parts))
                        if item.blame == "rejected":
                            if rejected:  # a second host rejects it too: it is the request
                                raise item.error
                            rejected.append(host)
            finally:
                await outcome.aclose()
        self.stats.failed += 1
        if answer.parts:
            raise StreamBroken(
                "the host serving this answer failed and no other host could continue it"
                + (f" ({last_error.message})" if last_error else "")
            )
        if last_error is not None:
            raise last_error
        raise timeout_error(f"the request did not complete within {config.request_timeout:.0f}s")

    def _job_frame(
        self, assignment: Assignment, kind: JobKind, model: str, request: dict[str, Any], answer: Answer,
        budget: float,
    ) -> str | None:
        """The job frame for this attempt; None when a continuation would exceed the frame limit."""
        body = _continuation(request, answer.text(), answer.tokens) if answer.parts else request
        frame = encode_job(assignment.id, kind, model, body, max(budget, 0.001))
        if answer.parts and len(frame.encode()) > self.config.max_frame_bytes:
            log.warning("job.prefix_too_large", job_id=assignment.id, prefix_chars=answer.chars)
            return None
        return frame

    async def _attempt(
        self, assignment: Assignment, model: str, frame: str, deadline: float, continuing: bool, stream: bool,
        room: int,
    ) -> AsyncGenerator[Chunk | Done | Failover, None]:
        """One host's try: content, then Done; or a Failover to try another host.

        Raises APIError when the request cannot succeed anywhere (a client error, a
        client that does not read, an answer past its bound).
        """
        host = assignment.host
        try:
            assignment.sent_at = time.monotonic()
            try:
                await host.send(frame)
            except (ConnectionError, RuntimeError) as exc:  # the host's socket closed just now
                yield Failover(APIError(502, f"Host lost: {exc}", type="server_error", code="host_lost"), "failed")
                return
            async with aclosing(self._events(assignment, deadline, continuing, stream)) as events:
                async for action in events:
                    if isinstance(action, Abort):
                        raise action.error
                    if isinstance(action, Chunk):
                        room -= len(action.content)
                        if room < 0:
                            self._failed(host, model, slow=False)
                            log.warning("job.answer_too_long", job_id=assignment.id, host_id=host.id)
                            raise StreamBroken("the host's answer exceeded the pool's limit on answer size")
                    elif isinstance(action, Done):
                        self._succeeded(assignment, action, stream)
                    yield action
        finally:
            self.scheduler.release(assignment)
            if not assignment.finished:  # the host may still be working on it
                self._cancel_on_host(host, assignment.id)

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
                yield Failover(timeout_error(f"host {host.name} sent no content for {waited:.1f}s {what}"), "slow")
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
                action, tail = Chunk(id=action.id, content=action.content, tokens=0), action
                tail.content = ""
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


def _merge(first: Chunk, events: JobEvents[JobEvent]) -> Chunk:
    """``first`` and the chunks queued right behind it, as one (a burst costs one SSE event)."""
    if events.empty() or not isinstance(events.peek(), Chunk):
        return first
    parts, count = [first.content], first.tokens
    while not events.empty() and isinstance(events.peek(), Chunk):
        more = events.get_nowait()
        assert isinstance(more, Chunk)
        parts.append(more.content)
        count += more.tokens
    return Chunk(id=first.id, content="".join(parts), tokens=count)
