"""Counting requests against limits: what :class:`~andy_host.coordinator.access.auth.Access`
asks of a meter, and the one-process meter (in memory).

A request *takes* its places at once: a place in a key's daily count (when it has a
key) and one in a per-minute sliding window (when it is limited per minute). Either
both are taken, or neither and the answer says which limit refused. A refund gives
back what a request took. Two meters:

- :class:`LocalMeter`: one process; the sliding windows in memory, daily counts in
  memory written behind to the store (``usage.py``);
- ``redis_limits.RedisMeter``: replicas sharing Redis; each take is one atomic script,
  so two replicas can never both admit the 11th of 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from andy_host.coordinator.access.ratelimit import Decision, SlidingWindow
from andy_host.coordinator.access.usage import Usage
from andy_host.coordinator.store.interface import Store


def seconds_to_utc_midnight(now: float) -> int:
    return max(1, math.ceil(86400 - now % 86400))


@dataclass(slots=True)
class Ask:
    """What one request takes: a window place (``who`` set) and/or a day place (``key_id`` set)."""

    who: str | None = None
    per_minute: int = 0
    key_id: int | None = None
    day: str = ""
    daily_limit: int = 0


@dataclass(slots=True)
class Taken:
    """The answer: ``refused`` is "" (admitted), "day" or "minute"."""

    refused: str
    day: Decision | None = None
    minute: Decision | None = None
    mark: str = ""  # what identifies the window place, for a refund

    @property
    def allowed(self) -> bool:
        return not self.refused


class Meter(Protocol):
    async def take(self, ask: Ask, now: float) -> Taken: ...
    async def refund(self, ask: Ask, taken: Taken) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


def day_decision(allowed: bool, limit: int, used_after: int, now: float) -> Decision:
    return Decision(allowed, limit, max(0, limit - used_after), seconds_to_utc_midnight(now))


class LocalMeter:
    """One process: windows and daily counts in memory (the default, unchanged)."""

    def __init__(self, store: Store, window: float) -> None:
        self.window = SlidingWindow(window)
        self.usage = Usage(store)

    async def take(self, ask: Ask, now: float) -> Taken:
        day = None
        if ask.key_id is not None:
            used = await self.usage.used(ask.key_id, ask.day)
            if used >= ask.daily_limit:
                return Taken("day", day=day_decision(False, ask.daily_limit, ask.daily_limit, now))
            day = day_decision(True, ask.daily_limit, used + 1, now)
        minute = None
        if ask.who is not None:
            minute = self.window.check(ask.who, ask.per_minute, now)
            if not minute.allowed:
                return Taken("minute", day=day, minute=minute)
        if ask.key_id is not None:
            self.usage.count(ask.key_id, ask.day, now)
        return Taken("", day=day, minute=minute)

    async def refund(self, ask: Ask, taken: Taken) -> None:
        if ask.who is not None and taken.minute is not None:
            self.window.refund(ask.who, taken.minute.stamp)
        if ask.key_id is not None:
            self.usage.refund(ask.key_id, ask.day)

    async def flush(self) -> None:
        await self.usage.flush()

    async def close(self) -> None:
        return None
