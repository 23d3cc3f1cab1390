"""Admission pacing for host websockets: how many may be between their upgrade and
their hello at once, in all and per address group, and a bounded line for the rest.

After a restart every host reconnects at once. Refusing all but the first
``total_limit`` would send thousands into exponential backoff, and the pool would
take minutes to fill again. Instead a connection that finds the gate full waits in a
first-come line, up to ``wait`` seconds, for a place that an earlier one leaves. The
line itself is bounded (``queue_limit``), and a waiting connection counts against its
address group, so one sender can hold only ``group_limit`` places in it; whoever finds
the line full, or waits too long, gets a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from andy_host.coordinator.access.ratelimit import SlidingWindow


@dataclass(slots=True)
class Gate:
    """Connections still waiting for their hello, counted in all and per address group."""

    total_limit: int
    group_limit: int
    queue_limit: int = 0
    total: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    line: deque[asyncio.Future[None]] = field(default_factory=deque)

    def try_enter(self, group: str) -> bool:
        """A place now, without waiting."""
        if self.groups.get(group, 0) >= self.group_limit or self.total >= self.total_limit or self.line:
            return False
        self._count(group, 1)
        self.total += 1
        return True

    async def enter(self, group: str, wait: float) -> bool:
        """A place now or, when the gate is full, after waiting in line up to ``wait``
        seconds; False when the group is at its limit, the line is full or the wait ends."""
        if self.try_enter(group):
            return True
        if self.groups.get(group, 0) >= self.group_limit or len(self.line) >= self.queue_limit or wait <= 0:
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.line.append(turn)
        self._count(group, 1)
        try:
            async with asyncio.timeout(wait):
                await turn
        except BaseException as exc:
            self._give_up(turn, group)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True  # the place of a connection that left was handed over

    def leave(self, group: str) -> None:
        self._count(group, -1)
        self._pass_on()

    def _give_up(self, turn: asyncio.Future[None], group: str) -> None:
        self._count(group, -1)
        if turn.done() and not turn.cancelled():
            self._pass_on()  # handed a place as the wait ended: the next one takes it
        else:
            turn.cancel()
            try:
                self.line.remove(turn)
            except ValueError:
                pass

    def _pass_on(self) -> None:
        """A place is free: the first live connection in line takes it, else it is returned."""
        while self.line:
            turn = self.line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.total -= 1

    def _count(self, group: str, delta: int) -> None:
        left = self.groups.get(group, 0) + delta
        if left:
            self.groups[group] = left
        else:
            self.groups.pop(group, None)


GATE = web.AppKey("gate", Gate)


NEW_HOSTS = web.AppKey("new_hosts", SlidingWindow)  # new host identities per address group per hour
