"""A job's events from its host, waiting for the relay: bounded in characters.

A host can stream faster than a client reads. The relay writes to the client and
blocks while the client does not read; the events it has not taken yet wait here, and
their size is bounded (``max_job_buffer``). Past the bound the queue is closed with
:class:`Overflow` and ``on_overflow`` is called (the API closes that client's
connection, which ends its request and so cancels the job on the host), rather than
the coordinator buffering whatever a host sends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
EVENT_COST = 64  # characters every queued event counts for, content or not


@dataclass(slots=True)
class Overflow:
    """The queue's bound was hit: what to tell the relay."""

    reason: str


class JobEvents(Generic[T]):
    """FIFO bounded by the characters of content in it; one consumer."""

    __slots__ = ("_closed", "_items", "_waiter", "max_chars", "on_overflow", "size")

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.on_overflow: Callable[[], None] | None = None
        self.size = 0
        self._items: deque[tuple[T | Overflow, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def put(self, event: T, size: int = 0) -> bool:
        """Queue ``event`` (``size`` characters of content; every event also counts
        ``EVENT_COST``). False when the bound was hit: the queue is then closed with
        :class:`Overflow` and takes nothing more. The bound is on the backlog: an event
        that arrives while nothing waits is taken whatever its size (the frame limit and
        the answer bound cap that), so a big answer is never blamed on its client."""
        if self._closed:
            return False
        size += EVENT_COST
        if self.size and self.size + size > self.max_chars:
            self._closed = True
            self._items.append((Overflow(f"more than {self.max_chars} characters waited for the client"), 0))
            self._wake()
            if self.on_overflow is not None:
                self.on_overflow()
            return False
        self.size += size
        self._items.append((event, size))
        self._wake()
        return True

    def end(self, event: T, size: int = 0) -> None:
        """Queue the job's last event (done, an error, a lost host) regardless of the
        bound; the queue takes nothing after it."""
        if not self._closed:
            self._closed = True
            self.size += size
            self._items.append((event, size))
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def peek(self) -> T | Overflow:
        return self._items[0][0]

    def get_nowait(self) -> T | Overflow:
        event, size = self._items.popleft()
        self.size -= size
        return event

    async def get(self) -> T | Overflow:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()
