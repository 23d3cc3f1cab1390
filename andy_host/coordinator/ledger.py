"""The contribution ledger: what each host (and host token) served, flushed to the store.

Only measured work of hosts in good standing is credited: what a host served while
quarantined is not (its failures still count). A host gets a row once it has done
something (served or failed a job): connecting alone, however often, writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from andy_host.coordinator.hosts import Host
from andy_host.coordinator.store import Store


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
        now = time.time()
        rows = []
        for host in [*hosts, *self.departed]:
            done = self.flushed.setdefault(host.conn, _Flushed(at=host.connected_at))
            if host.served == done.served and host.failures == done.failures and not (host.served or host.failures):
                continue  # never did anything yet: its time connected waits in memory
            credited = host.trust.quarantined is None
            rows.append((
                host.id, host.name, host.token_id, (host.served - done.served) if credited else 0,
                (host.tokens - done.tokens) if credited else 0, host.failures - done.failures,
                max(0.0, now - done.at),
            ))
            done.served, done.tokens, done.failures, done.at = host.served, host.tokens, host.failures, now
        for host in self.departed:
            self.flushed.pop(host.conn, None)
        self.departed.clear()
        if rows:
            await self.store.add_ledger(rows)
