"""The scheduler, the rate limiter and the agent's backoff as plain objects: no server,
no processes, milliseconds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from andy_host.agent.link import Backoff
from andy_host.config import CoordinatorConfig
from andy_host.coordinator.access.ratelimit import SlidingWindow
from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.pool.scheduler import Scheduler
from andy_host.errors import APIError
from andy_host.protocol import ModelInfo

MODEL = "m:latest"


async def settle() -> None:
    """Let granted waiters wake (a few turns of the loop, no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def _nothing(*_: Any) -> None:
    return None


def pool(*capacities: int, **config: Any) -> tuple[Scheduler, list[Host]]:
    registry = Registry()
    scheduler = Scheduler(registry, CoordinatorConfig(**config))
    hosts = []
    for i, capacity in enumerate(capacities):
        host = Host(id=f"h{i}", name=f"h{i}", backend="x", capacity=capacity, send=_nothing, close=_nothing,
                    conn=registry.next_conn())
        registry.add(host)
        registry.set_models(host, [ModelInfo(name=MODEL, loaded=True)])
        hosts.append(host)
    return scheduler, hosts


async def test_slots_are_reserved_and_given_back() -> None:
    scheduler, (host,) = pool(2)
    a = await scheduler.acquire(MODEL, set(), 0.1)
    b = await scheduler.acquire(MODEL, set(), 0.1)
    assert host.free == 0
    with pytest.raises(APIError) as err:
        await scheduler.acquire(MODEL, set(), 0.05)
    assert err.value.status == 503 and err.value.headers["Retry-After"]
    scheduler.release(a)
    scheduler.release(b)
    assert host.free == 2


async def test_dispatch_serves_the_least_recently_served_client_first() -> None:
    scheduler, _ = pool(1, queue_timeout=5)
    running = await scheduler.acquire(MODEL, set(), 1, client="flooder")
    flood = [asyncio.create_task(scheduler.acquire(MODEL, set(), 5, client="flooder")) for _ in range(3)]
    await asyncio.sleep(0)
    single = asyncio.create_task(scheduler.acquire(MODEL, set(), 5, client="single"))
    await asyncio.sleep(0)
    assert scheduler.queued(MODEL) == 4
    scheduler.release(running)  # the freed slot goes to the client served least recently
    await settle()
    assert single.done() and not any(f.done() for f in flood)
    scheduler.release(single.result())
    await settle()
    assert sum(f.done() for f in flood) == 1
    for task in flood:
        if not task.done():
            task.cancel()
    await asyncio.gather(*flood, return_exceptions=True)


async def test_a_client_holding_too_many_places_gets_429() -> None:
    scheduler, _ = pool(1, max_queue_per_client=1, queue_timeout=5)
    running = await scheduler.acquire(MODEL, set(), 1, client="c")
    waiting = asyncio.create_task(scheduler.acquire(MODEL, set(), 5, client="c"))
    await asyncio.sleep(0)
    with pytest.raises(APIError) as err:
        await scheduler.acquire(MODEL, set(), 5, client="c")
    assert err.value.status == 429
    scheduler.release(running)
    scheduler.release(await waiting)


async def test_a_waiter_that_gives_up_hands_its_slot_on() -> None:
    scheduler, (host,) = pool(1, queue_timeout=5)
    running = await scheduler.acquire(MODEL, set(), 1, client="a")
    waiting = asyncio.create_task(scheduler.acquire(MODEL, set(), 5, client="b"))
    await asyncio.sleep(0)
    waiting.cancel()  # the client left
    await asyncio.gather(waiting, return_exceptions=True)
    scheduler.release(running)
    assert host.free == 1 and scheduler.queued() == 0


def test_an_unmeasured_host_counts_at_the_median_speed() -> None:
    scheduler, (fast, slow, new) = pool(4, 4, 4)
    fast.health.tps, slow.health.tps = 100.0, 10.0
    assert scheduler.median_speed(MODEL) == 55.0
    assert scheduler.pick(MODEL, set()) is fast  # the newcomer (55) does not beat the fast host (100)
    fast.jobs = {f"j{i}": None for i in range(4)}  # type: ignore[misc]
    assert scheduler.pick(MODEL, set()) is new  # but it beats the slow one


def test_a_suspect_host_counts_for_less_and_a_quarantined_one_for_nothing() -> None:
    scheduler, (honest, suspect) = pool(4, 4)
    honest.health.tps = suspect.health.tps = 50.0
    suspect.trust.score = 3.0
    assert scheduler.pick(MODEL, set()) is honest
    suspect.trust.score, honest.trust.quarantined = 0.0, "junk"
    assert scheduler.pick(MODEL, set()) is suspect
    suspect.trust.quarantined = "junk too"
    assert scheduler.pick(MODEL, set()) is None
    assert scheduler.reserve(suspect) is not None  # checks still reach it


def test_trusted_only_reaches_trusted_hosts_only() -> None:
    scheduler, (_, mine) = pool(4, 4)
    mine.trusted = True
    assert scheduler.pick(MODEL, set(), trusted_only=True) is mine
    assert scheduler.candidates(MODEL, set(), "chat", trusted_only=True) == [mine]
    mine.status = "paused"
    assert scheduler.pick(MODEL, set(), trusted_only=True) is None


def test_sliding_window_is_exact_and_refunds() -> None:
    window = SlidingWindow(60)
    assert all(window.check("c", 3, 100.0 + i).allowed for i in range(3))
    refused = window.check("c", 3, 110.0)
    assert not refused.allowed and refused.retry_after == 50  # the first place frees at 160
    allowed = window.check("d", 3, 110.0)
    window.refund("d", allowed.stamp)
    assert window.check("d", 1, 111.0).allowed  # the refund gave the place back
    assert window.check("c", 3, 160.5).allowed  # a minute after the first


def test_backoff_doubles_with_jitter_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next() == 0.5
    low = Backoff(0.5, 4.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [0.25, 0.5, 1.0]  # each delay in [d/2, d]
