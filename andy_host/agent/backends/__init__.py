"""Backend adapters: one per kind of local inference server."""

from __future__ import annotations

import aiohttp

from andy_host.agent.backends.base import Backend
from andy_host.agent.backends.llamacpp import LlamaCppBackend
from andy_host.agent.backends.ollama import OllamaBackend
from andy_host.config import BackendConfig


def make_backend(config: BackendConfig, session: aiohttp.ClientSession, url: str | None = None) -> Backend:
    cls = {"ollama": OllamaBackend, "llamacpp": LlamaCppBackend}[config.kind]
    return cls(url or config.effective_url(), session, config)


__all__ = ["Backend", "make_backend"]
