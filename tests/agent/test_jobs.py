"""Every job ends with a frame: the job runner against in-process stand-in backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from andy_host.agent.backends.base import Backend, ChatPiece, Embeddings
from andy_host.agent.catalog import Catalog
from andy_host.agent.jobs import JobRunner, clamp_status
from andy_host.errors import BackendError, FrameTooLarge
from andy_host.protocol import ChatRequest, Done, Job, JobError, decode_host
from tests.harness.standin import StandIn


class Broken(StandIn):
    """A backend whose chat raises what a test gives it, after ``pieces``."""

    def __init__(self, error: BaseException, pieces: list[str] | None = None) -> None:
        self.error, self.pieces = error, pieces or []

    async def chat(self, backend_id: str, request: ChatRequest) -> AsyncIterator[ChatPiece]:
        for text in self.pieces:
            yield ChatPiece(content=text)
        raise self.error

    async def embed(self, backend_id: str, inputs: list[str]) -> Embeddings:
        raise self.error


async def frames_of(backend: Backend, send_limit: int | None = None) -> list[Any]:
    catalog = Catalog(backend)
    await catalog.refresh()
    runner = JobRunner(backend, catalog, 2)
    frames: list[str] = []

    async def send(text: str) -> None:
        if send_limit is not None and len(text) > send_limit:
            raise FrameTooLarge("too big")
        frames.append(text)

    runner.start(Job(id="j1", kind="chat", model="m:latest", request={"messages": [{"role": "user", "content": "q"}]}, budget=5), send)
    await runner.tasks["j1"]
    return [decode_host(f) for f in frames]


async def test_an_unexpected_exception_ends_the_job_with_a_500_at_once() -> None:
    frames = await frames_of(Broken(KeyError("choices"), ["partial"]))
    assert isinstance(frames[-1], JobError)
    assert frames[-1].status == 500 and frames[-1].code == "host_error"
    assert "KeyError" in frames[-1].message


@pytest.mark.parametrize(("given", "sent"), [(0, 502), (200, 502), (302, 502), (400, 400), (599, 599), (600, 502)])
async def test_adapter_statuses_are_clamped(given: int, sent: int) -> None:
    assert clamp_status(given) == sent
    frames = await frames_of(Broken(BackendError(given, "odd")))
    assert isinstance(frames[-1], JobError) and frames[-1].status == sent


async def test_a_context_error_is_coded() -> None:
    error = BackendError(400, "the request exceeds the available context size, try increasing it")
    frames = await frames_of(Broken(error))
    assert isinstance(frames[-1], JobError) and frames[-1].code == "context_length_exceeded"


async def test_an_answer_over_the_frame_limit_becomes_an_error_frame() -> None:
    class Long(Broken):
        async def chat(self, backend_id: str, request: ChatRequest) -> AsyncIterator[ChatPiece]:
            yield ChatPiece(content="x" * 5000, finish_reason="stop")

    frames = await frames_of(Long(RuntimeError()), send_limit=1000)
    assert len(frames) == 1 and isinstance(frames[0], JobError) and frames[0].code == "answer_too_large"
    assert not any(isinstance(f, Done) for f in frames)
