"""Echo handling decided by evidence: the continuation probe against each backend, and
what a continued answer looks like when the backend does or does not echo.

The fake servers run in this test's loop (aiohttp's TestServer on 127.0.0.1); the
Ollama one follows Ollama's docs (Ollama cannot be installed here).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from andy_host.agent.backends import make_backend
from andy_host.agent.backends.base import ChatPiece
from andy_host.agent.catalog import Catalog
from andy_host.agent.continuation import PROBE_PREFIX, Continuation, EchoStripper, probe_continuation
from andy_host.agent.jobs import JobRunner
from andy_host.config import BackendConfig
from andy_host.protocol import ChatRequest, Job, ModelInfo, decode_host
from tests.harness.fakes import llamacpp, ollama
from tests.harness.standin import StandIn


def llama_args(**overrides: Any) -> argparse.Namespace:
    defaults = {"model": "fake-llama", "label": "llamacpp", "token_delay": 0.0, "embeddings": True, "echo": True,
                "tools": True}
    return argparse.Namespace(**{**defaults, **overrides})


def ollama_args() -> argparse.Namespace:
    return argparse.Namespace(models="m:latest", embed_only="", failing="", label="ollama", no_tools="", version="0.12.11",
                              nothing_loaded=False, token_delay=0.0)


async def probe(app: Any, kind: str) -> Continuation | None:
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        config = BackendConfig(kind=kind, url=str(server.make_url("")))
        backend = make_backend(config, session, config.effective_url())
        found = await backend.discover()
        return await probe_continuation(backend, [(d.backend_id, d.info) for d in found])


async def test_probe_learns_that_llama_server_echoes() -> None:
    assert await probe(llamacpp.make_app(llama_args()), "llamacpp") == Continuation(supported=True, echoes=True)


async def test_probe_learns_that_a_backend_does_not_echo() -> None:
    assert await probe(llamacpp.make_app(llama_args(echo=False)), "llamacpp") == Continuation(True, False)
    assert await probe(ollama.make_app(ollama_args()), "ollama") == Continuation(True, False)


async def test_probe_learns_that_a_backend_cannot_continue() -> None:
    app = llamacpp.make_app(llama_args())
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        await session.post(server.make_url("/_fault"), json={"mode": "reject_prefix", "count": -1})
        config = BackendConfig(kind="llamacpp", url=str(server.make_url("")))
        backend = make_backend(config, session, config.effective_url())
        found = await backend.discover()
        result = await probe_continuation(backend, [(d.backend_id, d.info) for d in found])
    assert result == Continuation(supported=False, echoes=False)


async def test_probe_of_an_unreachable_backend_decides_nothing() -> None:
    async with aiohttp.ClientSession() as session:
        config = BackendConfig(kind="llamacpp", url="http://127.0.0.1:9", connect_timeout=1)
        backend = make_backend(config, session, config.effective_url())
        assert await probe_continuation(backend, [("m", ModelInfo(name="m:latest"))]) is None


class Scripted(StandIn):
    """A backend that answers every chat with the given pieces."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def chat(self, backend_id: str, request: ChatRequest) -> AsyncIterator[ChatPiece]:
        for text in self.pieces:
            yield ChatPiece(content=text)
        yield ChatPiece(finish_reason="stop")


async def continued(pieces: list[str], prefix: str, echoes: bool) -> str:
    """What a host sends back for a continuation of ``prefix`` whose backend says ``pieces``."""
    backend = Scripted(pieces)
    catalog = Catalog(backend)
    await catalog.refresh()
    runner = JobRunner(backend, catalog, 1)
    runner.echoes = echoes
    frames: list[str] = []

    async def send(text: str) -> None:
        frames.append(text)

    request = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": prefix}],
               "continuation": True}
    runner.start(Job(id="j1", kind="chat", model="m:latest", request=request, budget=5), send)
    await runner.tasks["j1"]
    text = ""
    for frame in frames:
        message = decode_host(frame)
        text += getattr(message, "content", "")
    return text


async def test_a_continuation_that_repeats_the_prefix_loses_nothing_without_echo() -> None:
    # A small model repeating itself: the answer so far was "Paris", and the
    # continuation starts with "Paris" again. Without echo, that is real text.
    assert await continued(["Paris", ". Paris is the capital."], "Paris", echoes=False) == (
        "Paris. Paris is the capital."
    )


async def test_the_echo_is_stripped_when_the_backend_echoes() -> None:
    assert await continued(["Par", "is", ". It is big."], "Paris", echoes=True) == ". It is big."
    # an answer that turns out not to start with the prefix is passed on whole
    assert await continued(["Pa", "lermo"], "Paris", echoes=True) == "Palermo"


@pytest.mark.parametrize(
    ("pieces", "out"),
    [(["abc", "def"], "def"), (["ab", "cdef"], "def"), (["xyz"], "xyz"), (["ab"], "ab")],
)
def test_echo_stripper(pieces: list[str], out: str) -> None:
    stripper = EchoStripper("abc")
    assert "".join(stripper.feed(p) for p in pieces) + stripper.flush() == out


def test_probe_prefix_is_longer_than_a_probe_answer() -> None:
    # the probe allows 3 tokens: no backend that does not echo could produce the prefix
    assert len(PROBE_PREFIX.split()) > 3
