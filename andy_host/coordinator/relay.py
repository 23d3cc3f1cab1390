"""Running one job on the pool: reserve a host, push the job, relay its events back.

Before any content: a host that fails (5xx, connection error, disconnect) or stays
silent past ``ttft_timeout`` is abandoned and the job goes to another host. A
non-streamed answer is asked of the backend in one piece (as the client asked for
it), so its host has ``answer_timeout`` to deliver all of it. After
content: a lost host, a stall past ``token_timeout``, a cut stream or a malformed
chunk continues the answer on another host that can continue a final assistant
message, the partial answer sent as that prefix (the host strips any echo of it).
Where no host can, :class:`StreamBroken` is raised and the client gets an explicit
error, never a truncated success. Client errors are not retried. Every attempt is
bounded by ``max_attempts`` and the whole request by ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator
from typing import Any

import structlog

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.health import HealthPolicy
from andy_host.coordinator.hosts import Assignment, Host, HostLost
from andy_host.coordinator.scheduler import Scheduler
from andy_host.coordinator.stats import PoolStats
from andy_host.errors import APIError, backend_error, timeout_error
from andy_host.protocol import FEATURE_CONTINUE, Cancel, Chunk, Done, JobError, JobKind, encode, encode_job

log = structlog.get_logger("andy_host.relay")


class StreamBroken(Exception):
    """The job failed after content was sent and no host could continue it."""


class Restart:
    """Yielded to a non-streaming caller: discard the partial text, it starts over."""


RESTART = Restart()

_background: set[asyncio.Task[None]] = set()
MIN_SPEED_SPAN = 0.01  # seconds of generation below which an answer says nothing about speed


def _cancel_on_host(host: Host, job_id: str) -> None:
    async def _send() -> None:
        try:
            await host.send(encode(Cancel(id=job_id)))
        except Exception:  # the host may be gone already; nothing else to do
            pass

    task = asyncio.get_running_loop().create_task(_send())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _continuation(request: dict[str, Any], partial: str, tokens: int) -> dict[str, Any]:
    messages = [*request["messages"], {"role": "assistant", "content": partial}]
    follow = {**request, "messages": messages, "continuation": True}
    if "max_tokens" in request:
        follow["max_tokens"] = max(1, request["max_tokens"] - tokens)
    return follow


class Relay:
    def __init__(self, scheduler: Scheduler, config: CoordinatorConfig, stats: PoolStats) -> None:
        self.scheduler = scheduler
        self.config = config
        self.stats = stats
        self.policy = HealthPolicy(config.eject_after, config.eject_base, config.eject_max)

    def _failed(self, assignment: Assignment, model: str, slow: bool) -> None:
        host = assignment.host
        host.failures += 1
        self.stats.failovers += 1
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

    async def run(
        self,
        kind: JobKind,
        model: str,
        request: dict[str, Any],
        client: str = "",
        stream: bool = True,
    ) -> AsyncGenerator[str | Done | Restart, None]:
        """Yield content strings, then the final ``Done``; raise APIError or StreamBroken.

        With ``stream=False`` a failure after content may also restart the answer from
        scratch on a host that cannot continue; ``RESTART`` tells the caller to discard.
        """
        config, loop = self.config, asyncio.get_running_loop()
        deadline = loop.time() + config.request_timeout
        self.stats.requests += 1
        tried: set[int] = set()
        partial: list[str] = []
        tokens = 0  # tokens delivered so far, by every host that worked on this answer
        last_error: APIError | None = None
        failures = 0
        for attempt in range(1, config.max_attempts + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            need = FEATURE_CONTINUE if partial else None
            if partial and not stream and not self.scheduler.candidates(model, tried, kind, need):
                partial.clear()  # nobody can continue it: a non-stream answer starts over
                tokens = 0
                need = None
                yield RESTART
            try:
                assignment = await self.scheduler.acquire(
                    model, tried, min(config.queue_timeout, remaining), kind, client, need,
                    await_hosts=attempt > 1,
                )
            except APIError:
                if last_error is not None or partial:
                    break
                raise
            host = assignment.host
            tried.add(host.conn)
            body = _continuation(request, "".join(partial), tokens) if partial else request
            bound = log.bind(job_id=assignment.id, host_id=host.id, model=model, attempt=attempt)
            if partial:
                self.stats.continued += 1
                bound.info("job.continuing", prefix_chars=sum(map(len, partial)))
            before = tokens  # tokens already delivered by earlier hosts
            outcome = self._attempt(assignment, kind, model, body, deadline, bool(partial), stream)
            try:
                async for item in outcome:
                    if isinstance(item, Chunk):
                        partial.append(item.content)
                        tokens += item.tokens
                        yield item.content
                    elif isinstance(item, Done):
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
                    else:  # an APIError the attempt ended with, to fail over from
                        failures += 1
                        last_error = item
                        bound.warning("job.failover", reason=item.message, content_sent=bool(partial))
            finally:
                await outcome.aclose()
        self.stats.failed += 1
        if partial:
            raise StreamBroken(
                "the host serving this answer failed and no other host could continue it"
                + (f" ({last_error.message})" if last_error else "")
            )
        if last_error is not None:
            raise last_error
        raise timeout_error(f"the request did not complete within {config.request_timeout:.0f}s")

    async def _attempt(
        self,
        assignment: Assignment,
        kind: JobKind,
        model: str,
        body: dict[str, Any],
        deadline: float,
        continuing: bool,
        stream: bool,
    ) -> AsyncGenerator[Chunk | Done | APIError, None]:
        """One host's try: content, then Done; or an APIError to fail over from.

        Chunks already queued are merged, so a burst costs one SSE event, not many.

        Raises APIError for failures that must not be retried (client errors).
        """
        config, loop = self.config, asyncio.get_running_loop()
        host = assignment.host
        got_content = False
        try:
            assignment.sent_at = time.monotonic()
            try:
                await host.send(
                    encode_job(assignment.id, kind, model, body, max(deadline - loop.time(), 0.001))
                )
            except ConnectionError as exc:  # the host's socket closed just now
                self._failed(assignment, model, slow=False)
                yield APIError(502, f"Host lost: {exc}", type="server_error", code="host_lost")
                return
            while True:
                if not stream:
                    limit = config.answer_timeout
                else:
                    limit = config.token_timeout if got_content else config.ttft_timeout
                limit = min(limit, deadline - loop.time())
                events = assignment.events
                try:
                    if events.empty():
                        async with asyncio.timeout(max(limit, 0.001)):
                            event = await events.get()
                    else:
                        event = events.get_nowait()
                except TimeoutError:
                    what = ("for a whole answer" if not stream
                            else "between tokens" if got_content else "before the first token")
                    self._failed(assignment, model, slow=True)
                    yield timeout_error(f"host {host.name} was silent for {limit:.1f}s {what}")
                    return
                final: Done | JobError | HostLost | None = None
                if isinstance(event, Done) and event.content:  # the last content came with the end
                    final, event = event, Chunk(id=event.id, content=event.content, tokens=0)
                    final.content = ""
                if isinstance(event, Chunk):
                    if final is None and not events.empty():
                        merged, count = [event.content], event.tokens
                        while not events.empty():
                            more = events.get_nowait()
                            if not isinstance(more, Chunk):
                                final = more
                                if isinstance(more, Done) and more.content:
                                    merged.append(more.content)
                                    more.content = ""
                                break
                            merged.append(more.content)
                            count += more.tokens
                        event = Chunk(id=event.id, content="".join(merged), tokens=count)
                    if event.content:
                        if not got_content:
                            assignment.first_token_at = time.monotonic()
                            got_content = True
                        yield event
                    if final is None:
                        continue
                    event = final
                if isinstance(event, Done):
                    assignment.finished = True
                    self._succeeded(assignment, event, stream)
                    yield event
                    return
                if isinstance(event, JobError):
                    assignment.finished = True
                    if event.retry_after:
                        host.health.cool_down(time.monotonic(), event.retry_after)
                    error = backend_error(event.status, event.message)
                    retryable = event.status >= 500 or event.status in (408, 429)
                    if continuing and 400 <= event.status < 500 and event.status != 429:
                        host.features.discard(FEATURE_CONTINUE)  # recorded: it cannot continue
                        yield error
                        return
                    if not retryable:
                        raise error
                    if event.status != 429 and not (event.status == 503 and event.retry_after):
                        self._failed(assignment, model, slow=False)
                    else:
                        self.stats.failovers += 1
                    yield error
                    return
                # HostLost
                self._failed(assignment, model, slow=False)
                yield APIError(502, f"Host lost: {event.reason}", type="server_error", code="host_lost")
                return
        finally:
            self.scheduler.release(assignment)
            if not assignment.finished:
                _cancel_on_host(host, assignment.id)
