"""Per-host health as the coordinator sees it: speed averages, cool-downs, ejection.

A host that fails ``eject_after`` times in a row is taken out of rotation for
``eject_base * 2**(offences-1)`` seconds (at most ``eject_max``); then exactly one
probe job is let through, and its outcome decides. A backend's ``Retry-After`` is
honoured as a cool-down for that host alone. Slowness alone never ejects a model's
last host (the caller says when a host is the last one).
"""

from __future__ import annotations

from dataclasses import dataclass

EMA_WEIGHT = 0.3


def _ema(old: float | None, new: float) -> float:
    return new if old is None else old + EMA_WEIGHT * (new - old)


@dataclass(slots=True)
class HealthPolicy:
    eject_after: int = 3
    eject_base: float = 5.0
    eject_max: float = 300.0
    forgive_after: int = 20


@dataclass(slots=True)
class HostHealth:
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    offences: int = 0
    ejected_until: float = 0.0
    probing: bool = False
    cooldown_until: float = 0.0
    ttft: float | None = None
    tps: float | None = None

    def admits(self, now: float, active_jobs: int) -> bool:
        """May this host take a job now? (During probation: one job at a time.)"""
        if now < self.cooldown_until or now < self.ejected_until:
            return False
        return not self.probing or active_jobs == 0

    def record_speed(self, ttft: float | None, tps: float | None) -> None:
        if ttft is not None:
            self.ttft = _ema(self.ttft, ttft)
        if tps is not None:
            self.tps = _ema(self.tps, tps)

    def record_success(self, policy: HealthPolicy) -> None:
        self.consecutive_failures = 0
        self.probing = False
        self.consecutive_successes += 1
        if self.consecutive_successes >= policy.forgive_after:
            self.offences = 0

    def record_failure(self, now: float, policy: HealthPolicy, slow: bool, last_host: bool) -> bool:
        """Count a failure; True when the host has just been ejected."""
        self.consecutive_successes = 0
        if slow and last_host:
            return False  # a model's last host is never ejected just for being slow
        self.consecutive_failures += 1
        if self.probing or self.consecutive_failures >= policy.eject_after:
            self.offences += 1
            self.ejected_until = now + min(policy.eject_max, policy.eject_base * 2 ** (self.offences - 1))
            self.probing = True  # after the ejection ends, one probe job decides
            self.consecutive_failures = 0
            return True
        return False

    def cool_down(self, now: float, seconds: float) -> None:
        self.cooldown_until = max(self.cooldown_until, now + seconds)
