"""Pool-wide counters kept by the coordinator (read by /health and the tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aiohttp import web


@dataclass(slots=True)
class PoolStats:
    requests: int = 0  # accepted jobs (chat and embed)
    completed: int = 0  # ended with a complete answer
    failed: int = 0  # ended with an explicit error after being accepted
    failovers: int = 0  # attempts abandoned for another host
    rescued: int = 0  # completed although at least one host failed them
    continued: int = 0  # streams continued on another host after content was sent
    ejections: int = 0  # hosts taken out of rotation
    strikes: int = 0  # claims or conduct the coordinator did not believe
    checks: int = 0  # answer checks with a verdict
    checks_failed: int = 0
    check_jobs: int = 0  # backend jobs spent on checks (the checked host's and the references)
    quarantines: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


STATS = web.AppKey("stats", PoolStats)
