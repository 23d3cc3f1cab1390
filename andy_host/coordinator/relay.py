"""Running one job on the pool: pick a host, push the job, relay its events back.

Before any content has reached the client, a failed, lost or silent host is abandoned
and the job goes to another host (up to ``max_attempts`` within ``request_timeout``).
After content has been sent a failure raises :class:`StreamBroken`; the API layer ends
the stream with an explicit error event, never a truncated success.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import structlog

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts import Assignment, Host, HostLost, Registry
from andy_host.coordinator.scheduler import acquire, new_job_id
from andy_host.errors import APIError, backend_error, timeout_error
from andy_host.protocol import Cancel, Chunk, Done, Job, JobError, JobKind, encode

log = structlog.get_logger("andy_host.relay")


class StreamBroken(Exception):
    """The job failed after content was sent to the client; it cannot be retried."""


_background: set[asyncio.Task[None]] = set()


def _cancel_on_host(host: Host, job_id: str) -> None:
    async def _send() -> None:
        try:
            await host.send(encode(Cancel(id=job_id)))
        except Exception:  # the host may be gone already; nothing else to do
            pass

    task = asyncio.get_running_loop().create_task(_send())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _retryable(event: JobError) -> bool:
    return event.status >= 500 or event.status in (408, 429)


async def run_job(
    registry: Registry,
    config: CoordinatorConfig,
    kind: JobKind,
    model: str,
    request: dict[str, object],
) -> AsyncGenerator[str | Done, None]:
    """Yield content strings, then the final ``Done``; raise APIError or StreamBroken."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.request_timeout
    tried: set[str] = set()
    last_error: APIError | None = None
    content_sent = False
    for attempt in range(1, config.max_attempts + 1):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            host = await acquire(registry, model, tried, min(config.queue_timeout, remaining), kind)
        except APIError:
            if last_error is not None:
                raise last_error from None
            raise
        tried.add(host.id)
        assignment = Assignment(id=new_job_id(), host=host)
        host.jobs[assignment.id] = assignment
        bound = log.bind(job_id=assignment.id, host_id=host.id, model=model, attempt=attempt)
        try:
            try:
                await host.send(
                    encode(Job(id=assignment.id, kind=kind, model=model, request=request, deadline=remaining))
                )
            except ConnectionError as exc:  # the host's socket closed just now
                bound.warning("job.send_failed", error=str(exc))
                last_error = APIError(502, f"Host lost: {exc}", type="server_error", code="host_lost")
                continue
            while True:
                limit = config.token_timeout if content_sent else config.ttft_timeout
                limit = min(limit, deadline - loop.time())
                try:
                    event = await asyncio.wait_for(assignment.events.get(), max(limit, 0.001))
                except TimeoutError:
                    what = "between tokens" if content_sent else "before the first token"
                    event = HostLost(f"host {host.name} was silent for {limit:.1f}s {what}")
                if isinstance(event, Chunk):
                    if event.content:
                        content_sent = True
                        yield event.content
                    continue
                if isinstance(event, Done):
                    assignment.finished = True
                    host.served += 1
                    host.tokens += event.usage.get("completion_tokens", 0)
                    bound.info("job.done", finish_reason=event.finish_reason)
                    yield event
                    return
                if isinstance(event, JobError):
                    assignment.finished = True
                    error = backend_error(event.status, event.message)
                    if not _retryable(event):
                        bound.info("job.rejected", status=event.status, message=event.message)
                        raise error
                    host.failures += 1
                    bound.warning("job.host_error", status=event.status, message=event.message)
                    if content_sent:
                        raise StreamBroken(f"host failed mid-stream: {event.message}")
                    last_error = error
                    break
                # HostLost: disconnect, death or silence
                host.failures += 1
                bound.warning("job.host_lost", reason=event.reason, content_sent=content_sent)
                if content_sent:
                    raise StreamBroken(f"the host serving this stream was lost: {event.reason}")
                last_error = (
                    timeout_error(event.reason)
                    if "silent" in event.reason
                    else APIError(502, f"Host lost: {event.reason}", type="server_error", code="host_lost")
                )
                break
        finally:
            if host.jobs.pop(assignment.id, None) is not None:
                registry.notify()
            if not assignment.finished:
                _cancel_on_host(host, assignment.id)
    if last_error is not None:
        raise last_error
    raise timeout_error(f"the request did not complete within {config.request_timeout:.0f}s")
