"""The contributor leaderboard: tokens served per host name over the last day, the last
week and all time, read from the ledger (``Store.leaderboard``).

Measured, credited work only (the ledger's rule: nothing a quarantined host served,
no banned host), the top ``leaderboard_size`` names of each period. The dashboard is
polled by every open page, so the three queries run at most every
``leaderboard_refresh`` seconds, one read at a time, whatever the number of viewers.
Host names are hostile input: the page shows them as text.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from andy_host.coordinator.store.interface import Store

log = structlog.get_logger("andy_host.leaderboard")

PERIODS = (("day", 86400.0), ("week", 7 * 86400.0), ("all", None))


class Leaderboard:
    """The last read of the three boards, refreshed when older than ``refresh`` seconds."""

    def __init__(self, size: int, refresh: float) -> None:
        self.size, self.refresh = size, refresh
        self._boards: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in PERIODS}
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def boards(self, store: Store) -> dict[str, list[dict[str, Any]]]:
        """The boards, read again from the store when stale (a failed read keeps the last)."""
        if time.monotonic() - self._read_at < self.refresh:
            return self._boards
        async with self._lock:
            if time.monotonic() - self._read_at < self.refresh:
                return self._boards  # another viewer read them while this one waited
            now = time.time()
            try:
                self._boards = {name: await store.leaderboard(None if span is None else now - span, self.size)
                                for name, span in PERIODS}
            except Exception as exc:  # a store error must not take the dashboard down
                log.warning("leaderboard.read_failed", error=str(exc))
            self._read_at = time.monotonic()
        return self._boards
