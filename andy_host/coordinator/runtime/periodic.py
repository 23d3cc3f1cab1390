"""The coordinator's periodic work, with one owner.

Each job is a coroutine *tick* run every ``interval`` seconds. An expected, passing
failure (the database busy or locked, a socket error, and whatever the store adds
with :meth:`Periodic.tolerate`, such as PostgreSQL restarting) is logged and the tick
runs again next time. Anything else is a bug: it is logged with its traceback and
``failed`` is set, which stops the server with a non-zero exit so that systemd
restarts it; a loop never dies silently.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("andy_host.periodic")

Tick = Callable[[], Awaitable[None]]
PASSING = (sqlite3.OperationalError, OSError)  # retried at the next tick


class Periodic:
    def __init__(self) -> None:
        self.failed = asyncio.Event()
        self.error: str | None = None
        self._jobs: list[tuple[str, float, Tick]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.passing: tuple[type[BaseException], ...] = PASSING

    def tolerate(self, *errors: type[BaseException]) -> None:
        """Count ``errors`` as passing too (a store's "the server is away for now")."""
        self.passing = (*self.passing, *errors)

    def every(self, name: str, interval: float, tick: Tick) -> None:
        """Register ``tick`` to run every ``interval`` seconds once started."""
        self._jobs.append((name, interval, tick))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(*job), name=f"periodic-{job[0]}") for job in self._jobs]

    async def _loop(self, name: str, interval: float, tick: Tick) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await tick()
            except self.passing as exc:
                log.warning("periodic.retrying", job=name, error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                log.exception("periodic.crashed", job=name)
                self.error = f"{name}: {type(exc).__name__}: {exc}"
                self.failed.set()
                return

    async def stop(self) -> None:
        """Cancel every loop and wait for each to end."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


PERIODIC = web.AppKey("periodic", Periodic)
