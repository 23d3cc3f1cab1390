"""Rate limits shared by replicas through Redis: exact across any number of them.

Each request is one ``EVALSHA`` of :data:`TAKE`, which runs atomically in Redis, on
Redis's clock (so replicas' clocks need not agree):

- ``andy:day:{key id}:{YYYY-MM-DD}``: a key's count today (a string). Missing, it is
  seeded from the store (``SET NX``, expiring a day after that UTC day ends): the
  store holds what every replica wrote behind, so a Redis that lost its data starts
  again from the store, at most ``flush_interval`` behind;
- ``andy:win:{who}``: a sorted set, one member per request in the last window
  (score: Redis time in microseconds), expiring with the window.

The script refuses at the daily limit, else at the per-minute limit, else counts the
request in both. A refund (the pool failed the request) removes the member and
decrements the day. Every replica also counts its own admitted requests in memory and
writes them behind to the store (``usage.py``), which the listings and restarts read.

When Redis cannot be reached, the replica falls back to its own in-memory meter (so
limits hold per replica rather than across them) and logs ``limits.redis_down``; it
tries Redis again on the next request.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from andy_host.coordinator.access.meter import Ask, LocalMeter, Taken, day_decision, seconds_to_utc_midnight
from andy_host.coordinator.access.ratelimit import Decision
from andy_host.coordinator.access.usage import Usage
from andy_host.coordinator.store.interface import Store

log = structlog.get_logger("andy_host.limits")

# KEYS: day key, window key. ARGV: has day, daily limit, has window, per minute,
# window (microseconds), a member unique to this request. Returns {code, used, in window, oldest, now, member}:
# code -1 the day is not seeded, 0 admitted, 1 refused by the day, 2 refused by the window.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local used = 0
if ARGV[1] == '1' then
  local v = redis.call('GET', KEYS[1])
  if not v then return {-1} end
  used = tonumber(v)
  if used >= tonumber(ARGV[2]) then return {1, used} end
end
local count, oldest, member = 0, 0, ''
if ARGV[3] == '1' then
  local window = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  count = redis.call('ZCARD', KEYS[2])
  if count >= tonumber(ARGV[4]) then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {2, used, count, tonumber(first[2]), now}
  end
  member = ARGV[6]
  redis.call('ZADD', KEYS[2], now, member)
  redis.call('PEXPIRE', KEYS[2], math.ceil(window / 1000) + 1000)
  count = count + 1
  oldest = tonumber(redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2])
end
if ARGV[1] == '1' then used = redis.call('INCR', KEYS[1]) end
return {0, used, count, oldest, now, member}
"""

# KEYS: day key (or ""), window key. ARGV: member ("" none), has day.
REFUND = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[2] == '1' and tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 1
"""


SHARED = "redis"  # a Taken's mark when Redis admitted it without a window place


def day_key(key_id: int, day: str) -> str:
    return f"andy:day:{key_id}:{day}"


def window_key(who: str) -> str:
    return f"andy:win:{who}"


class RedisMeter:
    """The :class:`~andy_host.coordinator.access.meter.Meter` of replicas (see the module docs)."""

    def __init__(self, client: aioredis.Redis, store: Store, window: float, retry: float = 2.0) -> None:
        self.redis, self.store, self.window, self.retry = client, store, window, retry
        self.retry_at = 0.0  # while down: Redis is asked again only from then (monotonic)
        self.take_script = client.register_script(TAKE)
        self.refund_script = client.register_script(REFUND)
        self.usage = Usage(store)  # this replica's counts, written behind to the store
        self.fallback = LocalMeter(store, window)
        self.suffix = secrets.token_hex(4)  # members from this replica never collide with another's
        self.seq = 0
        self.down = False

    async def take(self, ask: Ask, now: float) -> Taken:
        if self.down and time.monotonic() < self.retry_at:
            return await self.fallback.take(ask, now)  # a stalled Redis must not cost every request its timeout
        try:
            taken = await self._take(ask, now)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return await self.fallback.take(ask, now)
        if self.down:
            self.down = False
            log.info("limits.redis_back")
        if taken.allowed and ask.key_id is not None:
            self.usage.count(ask.key_id, ask.day, now)
        return taken

    def _went_down(self, exc: BaseException) -> None:
        self.retry_at = time.monotonic() + self.retry
        if not self.down:
            self.down = True
            log.warning("limits.redis_down", error=str(exc), fallback="this replica's own limits")

    async def _take(self, ask: Ask, now: float) -> Taken:
        self.seq += 1
        keys = [day_key(ask.key_id, ask.day) if ask.key_id is not None else "andy:none",
                window_key(ask.who) if ask.who is not None else "andy:none"]
        args: list[str | int] = [int(ask.key_id is not None), ask.daily_limit, int(ask.who is not None), ask.per_minute,
                int(self.window * 1_000_000), f"{self.suffix}{self.seq}"]
        reply: list[Any] = await self.take_script(keys=keys, args=args)
        if int(reply[0]) == -1:
            assert ask.key_id is not None
            await self._seed(ask.key_id, ask.day, now)
            reply = await self.take_script(keys=keys, args=args)
        return self._answer(ask, reply, now)

    async def _seed(self, key_id: int, day: str, now: float) -> None:
        stored = await self.store.usage_today(key_id)
        ttl = seconds_to_utc_midnight(now) + 86400
        await self.redis.set(day_key(key_id, day), stored, nx=True, ex=ttl)

    def _answer(self, ask: Ask, reply: list[Any], now: float) -> Taken:
        code, used = int(reply[0]), int(reply[1])
        day = None
        if ask.key_id is not None:
            day = day_decision(code != 1, ask.daily_limit, ask.daily_limit if code == 1 else used, now)
        if code == 1:
            return Taken("day", day=day)
        minute = None
        if ask.who is not None:
            count, oldest, at = int(reply[2]), int(reply[3]), int(reply[4])
            reset = math.ceil((oldest + self.window * 1_000_000 - at) / 1_000_000)
            minute = Decision(code != 2, ask.per_minute, max(0, ask.per_minute - count), max(0, reset))
        if code == 2:
            return Taken("minute", day=day, minute=minute)
        member = reply[5].decode() if isinstance(reply[5], bytes) else str(reply[5])
        return Taken("", day=day, minute=minute, mark=member or SHARED)

    async def refund(self, ask: Ask, taken: Taken) -> None:
        if not taken.mark:  # admitted by the fallback
            await self.fallback.refund(ask, taken)
            return
        member = "" if taken.mark == SHARED else taken.mark
        keys = [day_key(ask.key_id, ask.day) if ask.key_id is not None else "andy:none",
                window_key(ask.who) if ask.who is not None else "andy:none"]
        try:
            await self.refund_script(keys=keys, args=[member, str(int(ask.key_id is not None))])
        except (RedisError, OSError) as exc:
            self._went_down(exc)
        if ask.key_id is not None:
            self.usage.refund(ask.key_id, ask.day)

    async def flush(self) -> None:
        await self.usage.flush()
        await self.fallback.flush()

    async def close(self) -> None:
        return None  # the client belongs to the app (redis_state)
