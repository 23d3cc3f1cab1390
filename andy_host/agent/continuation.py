"""Continuing a partial answer (failover mid-stream), decided by evidence.

When a host dies mid-answer, the coordinator sends the partial answer to another host
as a final assistant message to continue. Backends differ: llama-server repeats that
prefix at the start of its answer, Ollama does not. Guessing from each answer's text
loses words whenever a non-echoing backend's continuation happens to begin like the
prefix (a small model repeating itself is enough), so each backend is asked once, at
start-up, with a tiny continuation whose prefix no answer could begin with by chance:

- an answer that starts with the probe prefix: the backend echoes, and the echo is
  stripped from every continuation;
- an answer that does not: the backend does not echo, and continuations pass through
  untouched;
- a 4xx: the backend cannot continue a message, so the host does not offer to.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from andy_host.agent.backends.base import Backend
from andy_host.errors import BackendError, BackendUnavailable
from andy_host.protocol import ChatRequest, Message, ModelInfo

log = structlog.get_logger("andy_host.continuation")

PROBE_PREFIX = "Probe 7f3a-41c9 from andy-host, continue here:"  # more words than the probe allows tokens
PROBE_MAX_TOKENS = 3
PROBE_MODELS = 3  # models tried before concluding that the backend cannot continue


@dataclass(frozen=True, slots=True)
class Continuation:
    """What the probe learned: can the backend continue, and does it echo the prefix."""

    supported: bool
    echoes: bool


def probe_request() -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="user", content="Say hello."), Message(role="assistant", content=PROBE_PREFIX)],
        max_tokens=PROBE_MAX_TOKENS, temperature=0.0, stream=False, continuation=True,
    )


async def _answer(backend: Backend, backend_id: str) -> str:
    parts = [piece.content async for piece in backend.chat(backend_id, probe_request())]
    return "".join(parts)


async def probe_continuation(backend: Backend, models: list[tuple[str, ModelInfo]]) -> Continuation | None:
    """Ask the backend to continue a prefix once; None when it could not be reached."""
    rejected = ""
    for backend_id, _info in models[:PROBE_MODELS]:
        try:
            text = await _answer(backend, backend_id)
        except BackendUnavailable as exc:
            log.warning("continuation.probe_unreachable", model=backend_id, error=exc.message)
            return None
        except BackendError as exc:
            if exc.status >= 500:
                log.warning("continuation.probe_failed", model=backend_id, status=exc.status, error=exc.message)
                return None
            rejected = exc.message  # 4xx: this model (or backend) will not continue; try another
            continue
        result = Continuation(supported=True, echoes=text.startswith(PROBE_PREFIX))
        log.info("continuation.probed", model=backend_id, echoes=result.echoes)
        return result
    if not models:
        return None
    log.info("continuation.unsupported", error=rejected)
    return Continuation(supported=False, echoes=False)


class EchoStripper:
    """Drops the continued prefix from the start of an answer from a backend that echoes.

    Text is held back only while it still matches the prefix; if the answer turns out
    not to start with it after all, everything held is passed on, so nothing is lost.
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
