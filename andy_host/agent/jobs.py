"""Running the jobs the coordinator pushes: at most ``capacity`` at once, cancellable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import structlog

from andy_host.agent.backends.base import Backend, ChatPiece
from andy_host.agent.catalog import Catalog
from andy_host.agent.continuation import EchoStripper
from andy_host.agent.controls import Pause
from andy_host.errors import (
    CONTEXT_EXCEEDED,
    BackendError,
    BackendUnavailable,
    FrameTooLarge,
    ProtocolError,
    says_context_exceeded,
)
from andy_host.protocol import (
    ChatRequest,
    CompletionRequest,
    Done,
    EmbedRequest,
    Job,
    JobError,
    TokenLogprob,
    ToolCall,
    encode,
    encode_chunk,
    read_request,
)


def clamp_status(status: int) -> int:
    """An error status the protocol carries: 400-599 (a backend's 3xx or 200 is a 502)."""
    return status if 400 <= status <= 599 else 502


def _retry_after(value: float | None) -> float | None:
    return None if value is None or value != value else min(max(value, 0.0), 86400.0)

log = structlog.get_logger("andy_host.jobs")


@dataclass(slots=True)
class _End:
    """How an answer ends, gathered from its pieces."""

    finish_reason: str = "stop"
    finished: bool = False  # the backend gave its finish reason: what follows is only usage
    usage: dict[str, int] = field(default_factory=dict)
    produced: int = 0
    tail: list[str] = field(default_factory=list)  # content that travels in the done frame
    calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def done(self, job_id: str) -> Done:
        reason = "tool_calls" if self.calls and self.finish_reason == "stop" else self.finish_reason
        return Done(id=job_id, finish_reason=reason, usage=self.usage, content="".join(self.tail),
                    tool_calls=self.calls, logprobs=self.logprobs or None)

Send = Callable[[str], Awaitable[None]]


class JobRunner:
    def __init__(self, backend: Backend, catalog: Catalog, capacity: int) -> None:
        self.backend = backend
        self.catalog = catalog
        self.capacity = capacity
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.served = 0
        self.tokens = 0
        self.draining = False
        self.paused: list[Pause] = []  # reasons the owner's controls give
        self.echoes = False  # the backend repeats a continued prefix (learned by the probe)
        self._slots = asyncio.Semaphore(capacity)

    def resize(self, capacity: int) -> None:
        """New capacity for jobs that start from now on (running ones are untouched)."""
        self.capacity = capacity
        self._slots = asyncio.Semaphore(capacity)

    @property
    def active(self) -> int:
        return len(self.tasks)

    def start(self, job: Job, send: Send) -> None:
        if job.id in self.tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run(job, send), name=f"job-{job.id}")
        self.tasks[job.id] = task
        task.add_done_callback(partial(self._forget, job.id))

    def _forget(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self.tasks.pop(job_id, None)

    def cancel(self, job_id: str) -> bool:
        task = self.tasks.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: Job, send: Send) -> None:
        """Run one job; every way it ends sends a frame (done or error), except a
        cancellation or a link that is already gone."""
        bound = log.bind(job_id=job.id, request_id=job.trace, model=job.model, kind=job.kind)
        try:
            await self._work(job, send)
            self.served += 1
            bound.info("job.done")
        except asyncio.CancelledError:
            bound.info("job.cancelled")
            raise
        except ConnectionError as exc:  # the link dropped: the coordinator fails the job over itself
            bound.info("job.link_lost", error=str(exc))
        except TimeoutError:
            bound.warning("job.out_of_time", budget=job.budget)
            await self._send_error(send, JobError(id=job.id, status=504, message="the job's time budget ran out"))
        except BackendError as exc:
            code = "backend_unreachable" if isinstance(exc, BackendUnavailable) else exc.code
            if exc.status == 400 and says_context_exceeded(exc.message):
                code = CONTEXT_EXCEEDED
            prompt_tokens, context = (exc.prompt_tokens, exc.context) if code == CONTEXT_EXCEEDED else (None, None)
            if code == CONTEXT_EXCEEDED and context is None:  # Ollama gives no counts: the context it serves
                context = self.catalog.served_context(job.model)
            bound.warning("job.backend_error", status=exc.status, error=exc.message, code=code,
                          prompt_tokens=prompt_tokens, context=context)
            await self._send_error(send, JobError(id=job.id, status=clamp_status(exc.status), message=exc.message,
                                                  code=code, retry_after=_retry_after(exc.retry_after),
                                                  prompt_tokens=prompt_tokens, context_tokens=context))
        except ProtocolError as exc:  # a request this host cannot read
            bound.warning("job.bad_request", error=str(exc))
            await self._send_error(send, JobError(id=job.id, status=400, message=str(exc), code="bad_request"))
        except FrameTooLarge as exc:
            bound.warning("job.answer_too_large", error=str(exc))
            await self._send_error(send, JobError(id=job.id, status=502, message=str(exc), code="answer_too_large"))
        except Exception as exc:  # a bug or a backend answer we did not expect: say so at once
            bound.exception("job.crashed")
            message = f"the host failed: {type(exc).__name__}"
            await self._send_error(send, JobError(id=job.id, status=500, message=message, code="host_error"))

    async def _work(self, job: Job, send: Send) -> None:
        backend_id = self.catalog.backend_id(job.model)
        if self.draining:
            raise BackendError(503, "this host is draining and takes no new jobs")
        if self.paused:
            raise BackendError(503, f"this host is paused: {'; '.join(p.text for p in self.paused)}")
        if backend_id is None:
            raise BackendError(503, f"model {job.model} is not served by this host any more")
        request = read_request(job.kind, job.request)
        async with self._slots, asyncio.timeout(job.budget):
            if isinstance(request, EmbedRequest):
                result = await self.backend.embed(backend_id, request.input)
                usage = {"prompt_tokens": result.prompt_tokens}
                await send(encode(Done(id=job.id, usage=usage, embeddings=result.vectors)))
            elif isinstance(request, CompletionRequest):
                await self._relay(job, self.backend.complete(backend_id, request), EchoStripper(""), send)
            else:
                await self._relay(job, self.backend.chat(backend_id, request), self._stripper(request), send)

    def _stripper(self, request: ChatRequest) -> EchoStripper:
        """What drops the echo of a continued prefix (nothing, unless continuing on a
        backend that echoes)."""
        continued = request.continuation and self.echoes and request.messages[-1].role == "assistant"
        return EchoStripper(request.messages[-1].content if continued else "")

    async def _relay(self, job: Job, pieces: AsyncIterator[ChatPiece], echo: EchoStripper, send: Send) -> None:
        """Send the answer's content as chunks, and its end (with tool calls, and content
        that arrived after the finish reason) as done."""
        end = _End()
        async for piece in pieces:
            content = echo.feed(piece.content) if piece.content else ""
            end.produced += piece.pieces if piece.content else 0
            end.calls.extend(piece.tool_calls)
            if piece.finish_reason:
                end.finish_reason = piece.finish_reason
                end.finished = True
            if end.finished:  # what follows the finish reason travels in the done frame
                end.tail.append(content)
                end.logprobs.extend(piece.logprobs or ())
            elif content or piece.logprobs:
                await send(encode_chunk(job.id, content, piece.pieces, piece.logprobs))
            if piece.usage:
                end.usage = piece.usage
        end.tail.append(echo.flush())
        end.usage.setdefault("completion_tokens", end.produced)
        self.tokens += end.usage["completion_tokens"]
        await send(encode(end.done(job.id)))

    @staticmethod
    async def _send_error(send: Send, error: JobError) -> None:
        try:
            await send(encode(error))
        except Exception as exc:  # link down: the coordinator fails the job over itself
            log.info("job.error_not_sent", job_id=error.id, error=str(exc))
