"""The contribution ledger: what each host (and host token) served, flushed to the store.

Only measured work of hosts in good standing is credited: what a host served while
quarantined is not (its failures still count). A host gets a row once it has done
something (served or failed a job): connecting alone, however often, writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from andy_host.coordinator.hosts.registry import Host
from andy_host.coordinator.store.interface import Store


@dataclass(slots=True)
class _Flushed:
    served: int = 0
    tokens: int = 0
    failures: int = 0
    at: float = 0.0


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.flushed: dict[int, _Flushed] = {}  # by connection
        self.departed: list[Host] = []

    def host_left(self, host: Host) -> None:
        self.departed.append(host)

    async def flush(self, hosts: list[Host]) -> None:
        """Write what each host did since the last flush; a write that fails (the store
        away for a moment) marks nothing, so the next flush writes it with the rest."""
        now = time.time()
        rows, marks, departed = [], [], list(self.departed)
        for host in [*hosts, *departed]:
            done = self.flushed.setdefault(host.conn, _Flushed(at=host.connected_at))
            if host.served == done.served and host.failures == done.failures and not (host.served or host.failures):
                continue  # never did anything yet: its time connected waits in memory
            credited = host.trust.quarantined is None
            rows.append((
                host.id, host.name, host.token_id, (host.served - done.served) if credited else 0,
                (host.tokens - done.tokens) if credited else 0, host.failures - done.failures,
                max(0.0, now - done.at),
            ))
            marks.append((done, _Flushed(host.served, host.tokens, host.failures, now)))
        if rows:
            await self.store.add_ledger(rows)
        for done, written in marks:
            done.served, done.tokens, done.failures, done.at = written.served, written.tokens, written.failures, now
        for host in departed:
            self.flushed.pop(host.conn, None)
        self.departed = [h for h in self.departed if all(h is not d for d in departed)]  # left while writing


LEDGER = web.AppKey("ledger", Ledger)
