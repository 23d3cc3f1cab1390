"""Running the jobs the coordinator pushes: at most ``capacity`` at once, cancellable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from andy_host.agent.backends.base import Backend, BackendError, BackendUnavailable
from andy_host.agent.catalog import Catalog
from andy_host.protocol import Done, Job, JobError, encode, encode_chunk

log = structlog.get_logger("andy_host.jobs")

Send = Callable[[str], Awaitable[None]]


class EchoStripper:
    """Drops a continued assistant prefix that the backend echoes back.

    llama-server repeats the final assistant message at the start of its answer when
    continuing it; Ollama does not. Text is held back only while it still matches the
    prefix, so nothing is lost when there is no echo.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.held = ""
        self.done = not prefix

    def feed(self, text: str) -> str:
        if self.done:
            return text
        self.held += text
        if self.held.startswith(self.prefix):
            self.done = True
            return self.held[len(self.prefix):]
        if self.prefix.startswith(self.held):
            return ""  # could still be the echo: wait for more
        self.done = True
        return self.held

    def flush(self) -> str:
        if self.done:
            return ""
        self.done = True
        return self.held


class JobRunner:
    def __init__(self, backend: Backend, catalog: Catalog, capacity: int) -> None:
        self.backend = backend
        self.catalog = catalog
        self.capacity = capacity
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.served = 0
        self.tokens = 0
        self.draining = False
        self.paused: list[str] = []  # reasons the owner's controls give
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
        bound = log.bind(job_id=job.id, model=job.model, kind=job.kind)
        backend_id = self.catalog.backend_id(job.model)
        try:
            if self.draining:
                raise BackendError(503, "this host is draining and takes no new jobs")
            if self.paused:
                raise BackendError(503, f"this host is paused: {'; '.join(self.paused)}")
            if backend_id is None:
                raise BackendError(503, f"model {job.model} is not served by this host any more")
            async with self._slots:
                async with asyncio.timeout(job.deadline):
                    if job.kind == "embed":
                        result = await self.backend.embed(backend_id, list(job.request["input"]))
                        await send(
                            encode(
                                Done(
                                    id=job.id,
                                    usage={"prompt_tokens": result.prompt_tokens},
                                    embeddings=result.vectors,
                                )
                            )
                        )
                    else:
                        await self._chat(job, backend_id, send)
            self.served += 1
            bound.info("job.done")
        except asyncio.CancelledError:
            bound.info("job.cancelled")
            raise
        except ConnectionError as exc:  # the link dropped: the coordinator fails the job over itself
            bound.info("job.link_lost", error=str(exc))
        except TimeoutError:
            bound.warning("job.deadline")
            await self._send_error(send, JobError(id=job.id, status=504, message="deadline passed on host"))
        except BackendUnavailable as exc:
            bound.warning("job.backend_unreachable", error=exc.message)
            await self._send_error(
                send, JobError(id=job.id, status=502, message=exc.message, code="backend_unreachable")
            )
        except BackendError as exc:
            bound.warning("job.backend_error", status=exc.status, error=exc.message)
            await self._send_error(
                send, JobError(id=job.id, status=exc.status, message=exc.message, retry_after=exc.retry_after)
            )

    async def _chat(self, job: Job, backend_id: str, send: Send) -> None:
        finish_reason = "stop"
        usage: dict[str, int] = {}
        produced = 0
        echo = EchoStripper(job.request["messages"][-1]["content"] if job.request.get("continuation") else "")
        finished = False  # the backend gave its finish reason: what follows is only usage
        tail: list[str] = []  # content that travels in the done frame
        async for piece in self.backend.chat(backend_id, job.request):
            content = echo.feed(piece.content) if piece.content else ""
            produced += piece.pieces if piece.content else 0
            if piece.finish_reason:
                finish_reason = piece.finish_reason
                finished = True
            if content:
                if finished:
                    tail.append(content)
                else:
                    await send(encode_chunk(job.id, content, piece.pieces))
            if piece.usage:
                usage = piece.usage
        tail.append(echo.flush())
        usage.setdefault("completion_tokens", produced)
        self.tokens += usage["completion_tokens"]
        await send(encode(Done(id=job.id, finish_reason=finish_reason, usage=usage, content="".join(tail))))

    @staticmethod
    async def _send_error(send: Send, error: JobError) -> None:
        try:
            await send(encode(error))
        except Exception as exc:  # link down: the coordinator fails the job over itself
            log.info("job.error_not_sent", job_id=error.id, error=str(exc))
