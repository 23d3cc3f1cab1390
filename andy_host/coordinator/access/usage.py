"""API keys' daily usage, counted in memory and written behind (every ``flush_interval``).

A key's usage today is what the store held when this process first looked (once per
key and day) plus what this process counted since: counts being written are still
counted while the write is under way, so a flush never opens a gap in a limit and
never loses a request admitted meanwhile.
"""

from __future__ import annotations

from collections import defaultdict

from andy_host.coordinator.store.interface import Store, utc_day

Slot = tuple[int, str]  # (key id, UTC day)


class Usage:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.stored: dict[Slot, int] = {}  # in the store, read once per key and day
        self.flushing: dict[Slot, int] = {}  # on their way to the store
        self.pending: defaultdict[Slot, int] = defaultdict(int)  # counted since
        self.last_used: dict[int, float] = {}

    async def used(self, key_id: int, day: str) -> int:
        slot = (key_id, day)
        if slot not in self.stored:  # this process is the only writer of usage
            self.stored[slot] = await self.store.usage_today(key_id)
        return self.stored[slot] + self.flushing.get(slot, 0) + self.pending[slot]

    def count(self, key_id: int, day: str, now: float) -> None:
        self.pending[(key_id, day)] += 1
        self.last_used[key_id] = now

    def refund(self, key_id: int, day: str) -> None:
        slot = (key_id, day)
        if self.pending[slot] > 0:
            self.pending[slot] -= 1

    async def flush(self) -> None:
        if not self.pending and not self.last_used:
            return
        self.flushing, self.pending = dict(self.pending), defaultdict(int)
        last_used, self.last_used = self.last_used, {}
        try:
            await self.store.add_usage(self.flushing, last_used)
        except BaseException:
            for slot, count in self.flushing.items():  # not written: count them again next time
                self.pending[slot] += count
            raise
        finally:
            written, self.flushing = self.flushing, {}
        for slot, count in written.items():
            if slot in self.stored:
                self.stored[slot] += count
        today = utc_day()
        self.stored = {slot: n for slot, n in self.stored.items() if slot[1] == today}
