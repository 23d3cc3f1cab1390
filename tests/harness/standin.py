"""An in-process stand-in backend for the agent's unit tests: one model, no HTTP.
Subclasses say how it answers a chat."""

from __future__ import annotations

from collections.abc import AsyncIterator

from andy_host.agent.backends.base import Backend, ChatPiece, Discovered, Embeddings
from andy_host.protocol import ChatRequest, CompletionRequest, ModelInfo


class StandIn(Backend):
    kind = "llamacpp"
    url = "stand-in"

    async def version(self) -> str | None:
        return None

    async def features(self) -> set[str]:
        return set()

    async def discover(self) -> list[Discovered]:
        return [Discovered("m", ModelInfo(name="m:latest"))]

    async def loaded(self) -> list[str]:
        return ["m"]

    async def chat(self, backend_id: str, request: ChatRequest) -> AsyncIterator[ChatPiece]:
        yield ChatPiece(finish_reason="stop")

    async def complete(self, backend_id: str, request: CompletionRequest) -> AsyncIterator[ChatPiece]:
        yield ChatPiece(finish_reason="stop")

    async def embed(self, backend_id: str, inputs: list[str]) -> Embeddings:
        raise NotImplementedError
