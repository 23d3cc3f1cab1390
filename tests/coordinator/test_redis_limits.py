"""The Redis meter against a real redis-server: exact across replicas under races,
refunds, daily counts seeded from the store, and the fallback when Redis is gone."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from andy_host.coordinator.access import redis_limits
from andy_host.coordinator.access.meter import Ask, LocalMeter
from andy_host.coordinator.access.redis_limits import RedisMeter, day_key
from andy_host.coordinator.store.interface import Store, open_store, utc_day


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    opened = await open_store(":memory:")
    yield opened
    await opened.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    opened = aioredis.from_url(redis_url)
    yield opened
    await opened.aclose()


async def test_two_replicas_racing_admit_exactly_the_limit(client: aioredis.Redis, store: Store) -> None:
    a, b = RedisMeter(client, store, 60), RedisMeter(client, store, 60)
    now = time.time()
    ask = Ask(who="ip:203.0.113.0", per_minute=10)
    taken = await asyncio.gather(*[(a if i % 2 else b).take(ask, now) for i in range(40)])
    assert sum(t.allowed for t in taken) == 10
    refused = [t for t in taken if not t.allowed]
    assert {t.refused for t in refused} == {"minute"}
    assert all(t.minute is not None and t.minute.remaining == 0 and 1 <= t.minute.retry_after <= 60
               for t in refused)
    admitted = sorted(t.minute.remaining for t in taken if t.allowed and t.minute is not None)
    assert admitted == list(range(10))  # each admitted request saw its own place
    await a.refund(ask, next(t for t in taken if t.allowed))  # the pool failed one: its place comes back
    assert (await b.take(ask, now)).allowed and not (await a.take(ask, now)).allowed


async def test_daily_count_is_seeded_from_the_store_and_exact(client: aioredis.Redis, store: Store) -> None:
    _, key_id = await store.create_key("k", daily_limit=5, per_minute=100)
    day = utc_day()
    await store.add_usage({(key_id, day): 3}, {})  # counted before Redis knew the key (or after it lost it)
    a, b = RedisMeter(client, store, 60), RedisMeter(client, store, 60)
    ask = Ask(key_id=key_id, day=day, daily_limit=5, who=f"key:{key_id}", per_minute=100)
    taken = await asyncio.gather(*[(a if i % 2 else b).take(ask, time.time()) for i in range(6)])
    assert sum(t.allowed for t in taken) == 2 and {t.refused for t in taken if not t.allowed} == {"day"}
    assert int(await client.get(day_key(key_id, day))) == 5
    assert 86400 < await client.ttl(day_key(key_id, day)) <= 2 * 86400
    await a.flush()
    await b.flush()
    assert await store.usage_today(key_id) == 5  # each replica wrote its own behind


async def test_without_redis_the_replica_keeps_its_own_limits(store: Store) -> None:
    gone = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    meter = RedisMeter(gone, store, 60)
    ask = Ask(who="ip:198.51.100.0", per_minute=2)
    taken = [await meter.take(ask, time.time()) for _ in range(3)]
    assert [t.allowed for t in taken] == [True, True, False]
    assert isinstance(meter.fallback, LocalMeter) and meter.down
    await meter.refund(ask, taken[0])
    assert (await meter.take(ask, time.time())).allowed
    await gone.aclose()


async def test_a_stalled_redis_costs_one_request_its_timeout_not_every_one(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis that accepts and never answers: the first take waits out the timeout, the
    next ones use this replica's own limits without asking Redis until ``retry`` has
    passed (on the meter's clock, moved here by hand), then Redis is asked again."""
    asked = 0  # connections: redis-py drops the one whose command timed out

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        asked += 1
        await reader.read()  # never answers

    clock = [1000.0]
    monkeypatch.setattr(redis_limits, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stalled = aioredis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3, socket_connect_timeout=0.3)
    meter = RedisMeter(stalled, store, 60, retry=1.0)
    ask = Ask(who="ip:198.51.100.9", per_minute=100)
    assert (await meter.take(ask, time.time())).allowed and meter.down
    assert asked == 1
    for _ in range(20):
        clock[0] += 0.04  # 0.8 s in all: still before retry
        assert (await meter.take(ask, time.time())).allowed
    assert asked == 1 and meter.down  # none of the 20 waited on Redis
    clock[0] += 0.3  # retry has passed
    assert (await meter.take(ask, time.time())).allowed
    assert asked == 2 and meter.down  # Redis is asked again (and still stalls)
    await stalled.aclose()
    server.close()
