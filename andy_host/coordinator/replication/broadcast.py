"""Replicated mode's Redis: the shared client, and changes announced to every replica.

Used only when ``coordinator.redis_url`` is set. :func:`connect` opens the client the
replica's parts share (limits in ``redis_limits``, the host directory in
``directory``). :class:`Changes` is the pub/sub channel ``andy:changes``: the replica
that applied an admin action (ban, release, kick, a revoked host token) publishes its
kind, and every replica, on its message, reads the store's new admin events at once
instead of at its next poll (``flush_interval``). A revoked or changed API key needs
no message: PostgreSQL's NOTIFY empties every replica's key cache (``postgres_store``).
Messages are hints; the store stays the truth, so a lost message delays an action by
one poll at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("andy_host.redis")

CHANNEL = "andy:changes"
Handler = Callable[[], Awaitable[None]]


async def connect(url: str, wait: float) -> aioredis.Redis:
    """The replica's Redis client; raises when the server does not answer within ``wait`` seconds."""
    client = aioredis.from_url(url, socket_connect_timeout=wait, socket_timeout=wait,
                               health_check_interval=30)
    try:
        await client.ping()
    except (RedisError, OSError):
        await client.aclose()
        raise
    return client


class Changes:
    """The ``andy:changes`` channel: publish a kind; run its handler on every replica."""

    def __init__(self, client: aioredis.Redis, handlers: dict[str, Handler], retry: float = 1.0) -> None:
        self.redis, self.handlers, self.retry = client, handlers, retry
        self.pubsub: aioredis.client.PubSub | None = None

    async def publish(self, kind: str) -> None:
        """Tell every replica (this one too); a failure only delays them until their poll."""
        try:
            await self.redis.publish(CHANNEL, kind)
        except (RedisError, OSError) as exc:
            log.warning("changes.publish_failed", kind=kind, error=str(exc))

    async def tick(self) -> None:
        """Wait up to a second for one message and run its handler (a ``Periodic`` tick)."""
        try:
            if self.pubsub is None:
                self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await self.pubsub.subscribe(CHANNEL)
            message = await self.pubsub.get_message(timeout=1.0)
        except (RedisError, OSError) as exc:
            log.warning("changes.unsubscribed", error=str(exc))
            await self._reset()
            await asyncio.sleep(self.retry)
            return
        if message is None or message.get("type") != "message":
            return
        data = message["data"]
        handler = self.handlers.get(data.decode() if isinstance(data, bytes) else str(data))
        if handler is not None:
            await handler()

    async def _reset(self) -> None:
        if self.pubsub is not None:
            pubsub, self.pubsub = self.pubsub, None
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (RedisError, OSError):
                pass

    async def close(self) -> None:
        await self._reset()
