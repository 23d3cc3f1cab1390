"""The requests of jobs to a backend: aiohttp's client, and one retry for a stale connection.

Backends close idle keep-alive connections (llama-server after 5 s). A request that
meets such a connection closing before any byte of an answer arrived is sent once
more, on a new connection, instead of failing the host.

(The agent once had a second, hand-written HTTP/1.1 client for these requests; it
was removed when ``scripts/ab.py`` measured it saving less than would justify a second
HTTP stack: docs/benchmarks.md has the figures.)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp
import orjson

STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)  # what a closed idle connection gives


class Post:
    """``async with Post(...) as response``: a JSON POST, retried once on a stale connection."""

    def __init__(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                 timeout: aiohttp.ClientTimeout) -> None:
        self.session, self.url, self.timeout = session, url, timeout
        self.data = orjson.dumps(body)
        self._request: Any = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        for attempt in (1, 2):
            self._request = self.session.post(self.url, data=self.data, timeout=self.timeout,
                                              headers={"Content-Type": "application/json"})
            try:
                response: aiohttp.ClientResponse = await self._request.__aenter__()
                return response
            except STALE:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._request.__aexit__(kind, exc, tb)
