"""The contribution ledger: what each host (and host token) served, flushed to the store.

Only measured work of hosts in good standing is credited: what a host served while
quarantined is not (its failures still count). A stranger's work reaches
``Host.served`` / ``Host.tokens`` only once an answer check covering it passed
(escrow.py); what it held when it was quarantined is voided here at the latest, and
what checks had credited it is taken back by a negative row (``escrow.forfeit``). A
departed host whose check is still running is flushed again until the check ends, so
a pass after it left is written too. A host gets a row once it has done something
(served, failed, or has work held or voided): connecting alone, however often, writes
nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from andy_host.coordinator.hosts.registry import Host
from andy_host.coordinator.store.interface import Store
from andy_host.coordinator.trust import escrow


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
        self.left_at: dict[int, float] = {}  # by connection: when a departed host left

    def host_left(self, host: Host) -> None:
        self.departed.append(host)
        self.left_at[host.conn] = time.time()

    async def flush(self, hosts: list[Host]) -> None:
        """Write what each host did since the last flush; a write that fails (the store
        away for a moment) marks nothing, so the next flush writes it with the rest."""
        now = time.time()
        rows, marks, departed = [], [], list(self.departed)
        checking = [h for h in departed if h.checking]  # a verdict may still credit it: flushed again
        for host in [*hosts, *departed]:
            escrow.sweep(host)  # a quarantined host's held work is voided
            done = self.flushed.setdefault(host.conn, _Flushed(at=host.connected_at))
            escrowed = host.escrow.held_jobs or host.escrow.voided_jobs
            if host.served == done.served and host.failures == done.failures and not (
                    host.served or host.failures or escrowed):
                continue  # never did anything yet: its time connected waits in memory
            end = self.left_at.get(host.conn, now)  # a departed host's time ends when it left
            if end <= done.at and (host.served, host.tokens, host.failures) == (done.served, done.tokens,
                                                                                 done.failures):
                continue  # departed, all written: waits for its check's verdict
            rows.append((  # credit as the escrow decided it (negative where a quarantine took it back)
                host.id, host.name, host.token_id, host.served - done.served, host.tokens - done.tokens,
                host.failures - done.failures, max(0.0, end - done.at),
            ))
            marks.append((done, _Flushed(host.served, host.tokens, host.failures, max(end, done.at))))
        if rows:
            await self.store.add_ledger(rows)
        for done, written in marks:
            done.served, done.tokens, done.failures, done.at = written.served, written.tokens, written.failures, \
                written.at
        for host in departed:
            if host not in checking:
                self.flushed.pop(host.conn, None)
                self.left_at.pop(host.conn, None)
        self.departed = [h for h in self.departed if all(h is not d for d in departed) or h in checking]


LEDGER = web.AppKey("ledger", Ledger)
