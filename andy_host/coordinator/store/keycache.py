"""The cache of API keys both stores keep in memory, so a request costs no query.

:class:`KeyCache` owns the keys by digest (live ones, and revoked ones so their 401 can
say when: a revocation is final), its bound (:data:`~.interface.KEY_CACHE_SIZE`, then it
starts again empty), the read-through on a miss, and the timer of its rechecks: at most
every ``key_recheck`` seconds on ``clock`` (``time.monotonic``; tests pass their own).
What empties it is each store's:

- SQLite: another process writing the database (the keys CLI) changes its
  ``data_version``, which the store reads when :meth:`KeyCache.due`, emptying the cache
  when it changed; its own writes empty it at once;
- PostgreSQL: a NOTIFY from the triggers empties it; while the listening connection is
  down every request reads its key (the cache not trusted, but kept up to date), and
  the store tries to re-open it when :meth:`KeyCache.due`; while the database itself
  cannot answer, a key read before is served from the cache.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.store.interface import KEY_CACHE_SIZE, ApiKey, Clock, StoreUnavailable

KeyRead = Callable[[str], Awaitable[ApiKey | None]]  # the key with this digest, revoked ones too, from the database


class KeyCache:
    """Keys by digest, read through on a miss (see the module docs)."""

    def __init__(self, recheck: float, clock: Clock = time.monotonic, *, due_at_once: bool = False,
                 size: int = KEY_CACHE_SIZE) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.recheck, self.clock, self.size = recheck, clock, size
        self._checked = -float("inf") if due_at_once else clock()

    def due(self) -> bool:
        """Whether ``recheck`` seconds passed since the last time this said so (then it
        starts counting again)."""
        now = self.clock()
        if now - self._checked < self.recheck:
            return False
        self._checked = now
        return True

    def clear(self) -> None:
        self.keys.clear()

    def remember(self, digest: str, key: ApiKey | None) -> None:
        """Cache what the database said of ``digest`` (None: forget it)."""
        if key is None:
            self.keys.pop(digest, None)
            return
        if len(self.keys) >= self.size:
            self.keys.clear()
        self.keys[digest] = key

    async def find(self, secret: str, read: KeyRead, revoked: bool = False, trusted: bool = True) -> ApiKey | None:
        """The live key for this secret, or None (malformed, unknown or revoked); with
        ``revoked``, a revoked key too (``ApiKey.revoked`` set: the caller says so). From
        the cache when ``trusted``, else (and on a miss) by ``read``; when that raises
        :class:`StoreUnavailable`, a key cached before is still served."""
        wanted = sec.digest(secret)
        key = self.keys.get(wanted) if trusted else None
        # only well-formed keys are ever cached: live ones, and revoked ones (a revocation is final)
        if key is None and sec.well_formed(secret, sec.API_KEY_PREFIX):
            key = await self._read(wanted, read)
        return None if key is None or (key.revoked is not None and not revoked) else key

    async def _read(self, wanted: str, read: KeyRead) -> ApiKey | None:
        try:
            key = await read(wanted)
        except StoreUnavailable:
            # the database is down, so no key can be revoked meanwhile: a key read before
            # keeps working; an unknown one cannot be checked
            kept = self.keys.get(wanted)
            if kept is None:
                raise
            return kept
        self.remember(wanted, key)
        return key
