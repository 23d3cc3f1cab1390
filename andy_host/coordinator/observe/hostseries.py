"""Per-host Prometheus series: which label value each host gets, and its running totals.

Host names come from strangers, so the label is bounded three ways:

- a name becomes a label value by :func:`host_label`: printable characters only, one
  line, at most ``MAX_LABEL_CHARS``; hosts whose names clean to the same value share
  one series (their counts add up), so a duplicated name never makes a duplicate series;
- at most ``cap`` names (``coordinator.metrics_max_hosts``) have series of their own;
  the hosts of any other name are counted together under ``OTHER``;
- a name with no connected host gives its place to a connected one that has none
  (the longest unseen first). Its series ends there; its counts are not moved to
  ``OTHER``, which would show as a burst of work that never happened.

Counts are the coordinator's own (``Host.served``, ``Host.tokens``: client jobs it
completed, measured tokens), taken as differences at each scrape and when a host
leaves, so the request path pays nothing for them. Everything here is pure.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from andy_host.coordinator.hosts.registry import Host

OTHER = "(other)"  # every host without a series of its own
UNNAMED = "(unnamed)"
MAX_LABEL_CHARS = 64


@functools.lru_cache(maxsize=16384)  # read for every connected host at every scrape
def host_label(name: str) -> str:
    """``name`` as a label value: control and other unprintable characters dropped,
    whitespace collapsed, at most ``MAX_LABEL_CHARS``; never one of the reserved values."""
    text = " ".join("".join(c if c.isprintable() else " " for c in name).split())[:MAX_LABEL_CHARS].strip()
    if not text:
        return UNNAMED
    return f"{text}_" if text in (OTHER, UNNAMED) else text


class ModelLabels:
    """Which model names are label values of their own: model names come from hosts, so
    at most ``cap`` of them (``coordinator.metrics_max_models``), each kept for the
    coordinator's life (a counter's series must not move); any other is ``OTHER``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.places: set[str] = set()

    def label(self, model: str) -> str:
        label = f"{model}_" if model == OTHER else model
        if label in self.places or not label:
            return label
        if len(self.places) >= self.cap:
            return OTHER
        self.places.add(label)
        return label


@dataclass(slots=True)
class HostTotals:
    """What the hosts under one label did since this coordinator started."""

    jobs: int = 0
    tokens: int = 0
    live_at: float = 0.0  # when a host under this label was last seen connected (monotonic)


class HostSeries:
    """The label of each host and the running totals of each label."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.named: dict[str, HostTotals] = {}
        self.other = HostTotals()
        self._counted: dict[int, tuple[int, int]] = {}  # connection -> (served, tokens) already added

    def refresh(self, hosts: Iterable[Host], now: float | None = None) -> dict[str, list[Host]]:
        """Add what connected hosts did since the last call; the hosts under each label
        (``OTHER`` included when some host has no series of its own)."""
        now = time.monotonic() if now is None else now
        live: dict[str, list[Host]] = {}
        for host in sorted(hosts, key=lambda h: h.conn):  # the longest connected get places first
            live.setdefault(host_label(host.name), []).append(host)
        shown: dict[str, list[Host]] = {}
        idle: list[tuple[float, str]] | None = None  # places to free, built once when the cap is reached
        for label, members in live.items():
            totals = self.named.get(label)
            if totals is None and len(self.named) >= self.cap:
                if idle is None:  # the longest unseen last, popped first
                    idle = sorted(((t.live_at, name) for name, t in self.named.items() if name not in live),
                                  reverse=True)
                if idle:
                    del self.named[idle.pop()[1]]
            totals = self._place(label, now)
            if totals is None:
                totals, label = self.other, OTHER
            for host in members:
                self._count(host, totals)
            shown.setdefault(label, []).extend(members)
        return shown

    def left(self, host: Host) -> None:
        """A connection ended: add what it did since the last scrape, and forget it."""
        self._count(host, self.named.get(host_label(host.name), self.other))
        self._counted.pop(host.conn, None)

    def _place(self, label: str, now: float) -> HostTotals | None:
        """The totals of ``label``, given a place when one is free."""
        totals = self.named.get(label)
        if totals is None:
            if len(self.named) >= self.cap:
                return None
            totals = self.named[label] = HostTotals()
        totals.live_at = now
        return totals

    def _count(self, host: Host, totals: HostTotals) -> None:
        served, tokens = self._counted.get(host.conn, (0, 0))
        totals.jobs += host.served - served
        totals.tokens += host.tokens - tokens
        self._counted[host.conn] = (host.served, host.tokens)
