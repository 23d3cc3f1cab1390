"""Sliding-window request limits (exact: N requests in any ``window`` seconds)."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

MAX_TRACKED = 200_000  # identities remembered; the least recently seen are forgotten first


@dataclass(slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds until a place frees up (or the window length when none is used)
    stamp: float = 0.0

    @property
    def retry_after(self) -> int:
        return max(1, self.reset)


class SlidingWindow:
    def __init__(self, window: float) -> None:
        self.window = window
        self.hits: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, who: str, limit: int, now: float) -> Decision:
        """Count a request for ``who`` if it fits in ``limit`` per window."""
        hits = self.hits.get(who)
        if hits is None:
            hits = self.hits[who] = deque()
            if len(self.hits) > MAX_TRACKED:
                self.hits.popitem(last=False)
        else:
            self.hits.move_to_end(who)
        cutoff = now - self.window
        while hits and hits[0] <= cutoff:
            hits.popleft()
        if len(hits) >= limit:
            return Decision(False, limit, 0, math.ceil(hits[0] + self.window - now))
        hits.append(now)
        reset = math.ceil(hits[0] + self.window - now)
        return Decision(True, limit, limit - len(hits), reset, now)

    def refund(self, who: str, stamp: float) -> None:
        hits = self.hits.get(who)
        if hits is not None:
            try:
                hits.remove(stamp)
            except ValueError:
                pass
