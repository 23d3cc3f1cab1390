"""An answer rendered once and shared by every reader for a few seconds (the dashboard's
feed, /metrics), so that its cost does not grow with the readers."""

from __future__ import annotations

import asyncio
import time


class FeedCache:
    """The last feed built, shared by every viewer for ``seconds``; one build at a time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.body = b""
        self.built_at = -float("inf")
        self.lock = asyncio.Lock()

    def fresh(self) -> bool:
        return time.monotonic() - self.built_at < self.seconds
