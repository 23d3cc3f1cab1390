"""The store on PostgreSQL (asyncpg): durable state shared by coordinator replicas.

The same :class:`~andy_host.coordinator.store.interface.Store` as ``sqlite``, on a pool of
``database_pool_size`` connections: this module owns the queries, the migration runner and
the :class:`Listener`. The schema is ``schema.POSTGRES_MIGRATIONS``, applied at open under
an advisory lock. Live API keys are cached in memory (``keycache``), so a request costs no
query; one more connection LISTENs on ``andy_invalidate``, which triggers notify on every
change to keys or host tokens (from any replica, the CLI or psql), and each notification
empties the cache: a revoked key stops working on every replica within milliseconds.
While that connection is down, each request reads its key (refreshing the cache), and it
is re-opened at most every ``key_recheck`` seconds; while the database itself is down, a
key read before is served from the cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import asyncpg
import structlog

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.access.keyscope import NEVER
from andy_host.coordinator.hosts.enrolment import Identity
from andy_host.coordinator.store.interface import (
    KEY_RECHECK,
    LEDGER_HOURS_KEPT,
    AdminEvent,
    ApiKey,
    Clock,
    Created,
    Credential,
    HostToken,
    KeyChanges,
    KnownModel,
    LedgerRow,
    LedgerTuple,
    StoreUnavailable,
    ledger_hour,
    one_id,
    utc_day,
)
from andy_host.coordinator.store.keycache import KeyCache
from andy_host.coordinator.store.schema import (
    IDENTITY_COLUMNS,
    INVALIDATE_CHANNEL,
    KEY_COLUMNS,
    KEY_LISTING,
    LEDGER_LISTING,
    LEDGER_QUERY,
    MIGRATION_LOCK,
    POSTGRES_MIGRATIONS,
    STANDING_COLUMNS,
    STANDINGS_QUERY,
    TOKEN_COLUMNS,
    TOKEN_LISTING,
    KeyRow,
    TokenRow,
    identity_of,
    leaderboard_of,
    listing,
    standing_of,
    standings_of,
)
from andy_host.coordinator.trust.standing import HostTrust

log = structlog.get_logger("andy_host.postgres")

DEFAULT_POOL_SIZE = 10
# PostgreSQL away for now (restarting, failing over, out of connections; InterfaceError:
# a connection that died inside a transaction): the next query opens a new connection,
# so periodic work retries instead of stopping the replica
UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError, asyncpg.InterfaceError, OSError, TimeoutError,
)
DEFAULT_TIMEOUT = 5.0  # seconds to connect (coordinator.database_timeout)


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply the migrations this database lacks; returns the schema version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        for version, statements in enumerate(POSTGRES_MIGRATIONS, start=1):
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
            log.info("postgres.migrated", version=version)
    return max(int(current), len(POSTGRES_MIGRATIONS))


class Listener:
    """The connection that LISTENs on :data:`~.schema.INVALIDATE_CHANNEL` for ``cache``:
    each notification empties it; while it is down the cache is not trusted (each request
    reads its key), and it is re-opened when the cache is due a recheck."""

    def __init__(self, dsn: str, cache: KeyCache, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.dsn, self.cache, self.timeout = dsn, cache, timeout
        self.conn: asyncpg.Connection | None = None

    def _notified(self, *_: object) -> None:
        self.cache.clear()

    def _lost(self, _conn: asyncpg.Connection) -> None:
        """Not emptied: while nobody listens, the keys are read from the database at each
        request (and kept up to date from it), and used only when it cannot answer."""
        log.warning("postgres.listener_lost")
        self.conn = None

    async def usable(self) -> bool:
        """Whether the cache may be trusted now (re-opening the listener when due)."""
        if self.conn is not None and not self.conn.is_closed():
            return True
        if not self.cache.due():
            return False
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.timeout)
            await conn.add_listener(INVALIDATE_CHANNEL, self._notified)
            conn.add_termination_listener(self._lost)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("postgres.listener_failed", error=str(exc))
            return False
        self.cache.clear()  # changes made while nobody listened
        self.conn = conn
        return True

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.remove_termination_listener(self._lost)  # closing it is no loss to warn of
            await conn.close()


class PostgresStore:
    """The :class:`~andy_host.coordinator.store.interface.Store` on PostgreSQL (see the module docs)."""

    def __init__(self, pool: asyncpg.Pool, cache: KeyCache, listener: Listener) -> None:
        self.pool, self.cache, self.listener = pool, cache, listener

    @classmethod
    async def open(cls, dsn: str, key_recheck: float = KEY_RECHECK, pool_size: int = DEFAULT_POOL_SIZE,
                   connect_timeout: float = DEFAULT_TIMEOUT, *, clock: Clock = time.monotonic) -> PostgresStore:
        # connecting (and each statement) gives up after ``connect_timeout``: an unreachable
        # database must cost a request seconds, not asyncpg's default minute
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max(1, pool_size), timeout=connect_timeout,
                                         command_timeout=connect_timeout * 6)
        async with pool.acquire() as conn:
            await migrate(conn)
        cache = KeyCache(key_recheck, clock, due_at_once=True)
        store = cls(pool, cache, Listener(dsn, cache, connect_timeout))
        await store.listener.usable()
        return store

    async def close(self) -> None:
        await self.listener.close()
        await self.pool.close()

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT MAX(version) FROM schema_version"))

    # models ----------------------------------------------------------------------

    async def known_models(self) -> list[KnownModel]:
        rows = await self.pool.fetch("SELECT name, COALESCE(last_seen, first_seen) FROM models_seen ORDER BY name")
        return [KnownModel(str(r[0]), float(r[1])) for r in rows]

    async def change_models(self, new: Iterable[str], forgotten: Iterable[str]) -> None:
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO models_seen (name, first_seen, last_seen) VALUES ($1, $2, $2)"
                " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
                [(n, now) for n in new],
            )
            await conn.executemany("DELETE FROM models_seen WHERE name = $1", [(n,) for n in forgotten])

    async def touch_models(self, seen: dict[str, float], forgotten: Iterable[str]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany("UPDATE models_seen SET last_seen = $1 WHERE name = $2",
                                   [(at, name) for name, at in seen.items()])
            await conn.executemany("DELETE FROM models_seen WHERE name = $1", [(n,) for n in forgotten])

    # API keys and usage ----------------------------------------------------------

    async def create_key(self, name: str, daily_limit: int, per_minute: int,
                         host_token: str | None = None, trusted_only: bool = False,
                         expires: float | None = None, models: tuple[str, ...] = ()) -> Created:
        token_id = await self._token_id(host_token) if host_token else None
        secret = sec.new_secret(sec.API_KEY_PREFIX)
        key_id = await self.pool.fetchval(
            "INSERT INTO api_keys (display, name, hash, created, daily_limit, per_minute, host_token_id, trusted_only,"
            " expires, models) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            secret[: sec.DISPLAY_LEN], name, sec.digest(secret), time.time(), daily_limit, per_minute, token_id,
            trusted_only, expires or None, list(models) or None,
        )
        return Created(secret, int(key_id))

    async def find_key(self, secret: str, revoked: bool = False) -> ApiKey | None:
        """The live key for this secret, or None (malformed, unknown or revoked); with
        ``revoked``, a revoked key too (``ApiKey.revoked`` set: the caller says so)."""
        return await self.cache.find(secret, self._read_key, revoked, trusted=await self.listener.usable())

    async def _read_key(self, digest: str) -> ApiKey | None:
        try:
            row = await self.pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1", digest)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if row is None:
            return None
        key = KeyRow.of(row, tuple(row[9] or ()))
        return key.api_key() if sec.same(key.hash, digest) else None

    async def list_keys(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT k.id, k.display, k.name, k.created, k.last_used, k.revoked, k.daily_limit, k.per_minute,"
            " COALESCE(u.count, 0), t.display, k.trusted_only, k.expires, k.models FROM api_keys k"
            " LEFT JOIN key_usage u ON u.key_id = k.id AND u.day = $1"
            " LEFT JOIN host_tokens t ON t.id = k.host_token_id ORDER BY k.id",
            utc_day(),
        )
        keys = listing(KEY_LISTING, rows)
        for key in keys:
            key["models"] = list(key["models"] or ())
        return keys

    async def update_key(self, ident: str, changes: KeyChanges) -> bool:
        """Change a live key's name, limits, expiry, models or trusted-only; False when no
        unrevoked key has that prefix or id."""
        columns: dict[str, Any] = {
            name: value for name, value in (("name", changes.name), ("daily_limit", changes.daily_limit),
                                            ("per_minute", changes.per_minute),
                                            ("trusted_only", changes.trusted_only)) if value is not None
        }
        if changes.expires is not None:
            columns["expires"] = None if changes.expires == NEVER else changes.expires
        if changes.models is not None:
            columns["models"] = list(changes.models) or None
        key_id = await self._live_id("api_keys", ident, "key")
        if key_id is None or not columns:  # nothing to change: say whether the key exists
            return key_id is not None
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=2))  # fixed column names
        self.cache.clear()
        status = await self.pool.execute(f"UPDATE api_keys SET {sets} WHERE revoked IS NULL AND id = $1",
                                         key_id, *columns.values())
        return _count(status) > 0

    async def _live_id(self, table: str, ident: str, what: str) -> int | None:
        """The id of the one live row of ``table`` (api_keys or host_tokens) that ``ident``
        names (see store.one_id: a prefix that several share is refused)."""
        rows = await self.pool.fetch(f"SELECT id FROM {table} WHERE revoked IS NULL AND"  # a fixed table name
                                     " (display = $1 OR id::text = $2)", ident[: sec.DISPLAY_LEN], ident)
        return one_id(ident, (int(r[0]) for r in rows), what)

    async def revoke_key(self, ident: str) -> bool:
        key_id = await self._live_id("api_keys", ident, "key")
        if key_id is None:
            return False
        self.cache.clear()
        status = await self.pool.execute("UPDATE api_keys SET revoked = $1 WHERE revoked IS NULL AND id = $2",
                                         time.time(), key_id)
        return _count(status) > 0

    async def usage_today(self, key_id: int) -> int:
        count = await self.pool.fetchval("SELECT count FROM key_usage WHERE key_id = $1 AND day = $2",
                                         key_id, utc_day())
        return int(count or 0)

    async def add_usage(self, counts: dict[tuple[int, str], int], last_used: dict[int, float]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO key_usage (key_id, day, count) VALUES ($1, $2, $3)"
                " ON CONFLICT (key_id, day) DO UPDATE SET count = key_usage.count + excluded.count",
                [(k, d, n) for (k, d), n in counts.items() if n],
            )
            # the trigger ignores last_used: usage flushes never empty the replicas' key caches
            await conn.executemany("UPDATE api_keys SET last_used = $1 WHERE id = $2",
                                   [(t, k) for k, t in last_used.items()])

    # host tokens -----------------------------------------------------------------

    async def create_token(self, name: str, trusted: bool = False) -> Created:
        secret = sec.new_secret(sec.HOST_TOKEN_PREFIX)
        token_id = await self.pool.fetchval(
            "INSERT INTO host_tokens (display, name, hash, created, trusted) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            secret[: sec.DISPLAY_LEN], name, sec.digest(secret), time.time(), trusted,
        )
        return Created(secret, int(token_id))

    async def _token_id(self, ident: str) -> int:
        rows = await self.pool.fetch(
            "SELECT id FROM host_tokens WHERE display = $1 OR id::text = $2", ident[: sec.DISPLAY_LEN], ident
        )
        found = one_id(ident, (int(r[0]) for r in rows), "host token")
        if found is None:
            raise KeyError(f"no host token {ident!r}")
        return found

    async def find_token(self, secret: str) -> HostToken | None:
        """The live token for this secret (banned ones too: the caller refuses them)."""
        if not sec.well_formed(secret, sec.HOST_TOKEN_PREFIX):
            return None
        wanted = sec.digest(secret)
        row = await self.pool.fetchrow(f"SELECT {TOKEN_COLUMNS} FROM host_tokens WHERE hash = $1 AND revoked IS NULL",
                                       wanted)
        token = None if row is None else TokenRow.of(row)
        if token is None or not sec.same(token.hash, wanted):
            return None
        return token.host_token()

    async def revoked_tokens(self) -> set[int]:
        return {int(r[0]) for r in await self.pool.fetch("SELECT id FROM host_tokens WHERE revoked IS NOT NULL")}

    async def list_tokens(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT t.id, t.display, t.name, t.created, t.revoked, t.trusted, t.ban_reason,"
            " COALESCE(SUM(l.requests), 0)::bigint, COALESCE(SUM(l.tokens), 0)::bigint FROM host_tokens t"
            " LEFT JOIN host_ledger l ON l.token_id = t.id GROUP BY t.id ORDER BY t.id"
        )
        return listing(TOKEN_LISTING, rows)

    async def revoke_token(self, ident: str) -> bool:
        token_id = await self._live_id("host_tokens", ident, "host token")
        if token_id is None:
            return False
        status = await self.pool.execute("UPDATE host_tokens SET revoked = $1 WHERE revoked IS NULL AND id = $2",
                                         time.time(), token_id)
        return _count(status) > 0

    async def tokens_served_by_token(self, token_id: int) -> int:
        total = await self.pool.fetchval("SELECT COALESCE(SUM(tokens), 0) FROM host_ledger WHERE token_id = $1",
                                         token_id)
        return int(total)

    # host identities and standing ---------------------------------------------------

    async def identity(self, host_id: str) -> Identity | None:
        row = await self.pool.fetchrow(f"SELECT {IDENTITY_COLUMNS} FROM host_identities WHERE host_id = $1", host_id)
        return None if row is None else identity_of(row)

    async def register_identity(self, host_id: str, token_id: int | None, secret_hash: str | None) -> None:
        await self.pool.execute(
            "INSERT INTO host_identities (host_id, token_id, secret_hash, created) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (host_id) DO NOTHING",
            host_id, token_id, secret_hash, time.time(),
        )

    async def host_in_ledger(self, host_id: str) -> bool:
        return await self.pool.fetchval("SELECT 1 FROM host_ledger WHERE host_id = $1", host_id) is not None

    async def standing(self, host_id: str) -> HostTrust:
        row = await self.pool.fetchrow(f"SELECT {STANDING_COLUMNS} FROM host_identities WHERE host_id = $1", host_id)
        return HostTrust() if row is None else standing_of(row)

    async def save_standing(self, host_id: str, trust: HostTrust) -> None:
        await self.pool.execute(
            "UPDATE host_identities SET score = $1, strikes = $2, checks_passed = $3, checks_failed = $4,"
            " quarantined = $5 WHERE host_id = $6",
            trust.score, trust.strikes, trust.checks_passed, trust.checks_failed, trust.quarantined, host_id,
        )

    async def standings(self) -> dict[str, dict[str, Any]]:
        return standings_of(await self.pool.fetch(STANDINGS_QUERY))

    async def host_credential(self, host_id: str) -> Credential | None:
        row = await self.pool.fetchrow("SELECT token_id, secret_hash FROM host_identities WHERE host_id = $1",
                                       host_id)
        return None if row is None else Credential(row[0], row[1])

    # the admin's actions -------------------------------------------------------------

    async def ban_host(self, host_id: str, reason: str) -> str | None:
        """Ban a host's credential: its token (every host on it), else its own id and secret."""
        credential = await self.host_credential(host_id)
        if credential is None:
            return None
        now = time.time()
        async with self.pool.acquire() as conn, conn.transaction():
            if credential.token_id is not None:
                await conn.execute("UPDATE host_tokens SET banned = $1, ban_reason = $2 WHERE id = $3",
                                   now, reason, credential.token_id)
            await conn.execute("UPDATE host_identities SET banned = $1, ban_reason = $2 WHERE host_id = $3",
                               now, reason, host_id)
            await conn.execute("INSERT INTO admin_events (kind, target, reason, at) VALUES ('ban', $1, $2, $3)",
                               host_id, reason, now)
        return f"token {credential.token_id}" if credential.token_id is not None else f"host {host_id}"

    async def release_host(self, host_id: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE host_identities SET quarantined = NULL, score = 0 WHERE host_id = $1", host_id
            )
            if _count(status):
                await conn.execute(
                    "INSERT INTO admin_events (kind, target, reason, at) VALUES ('release', $1, NULL, $2)",
                    host_id, time.time(),
                )
        return _count(status) > 0

    async def add_event(self, kind: str, target: str, reason: str | None = None) -> None:
        await self.pool.execute("INSERT INTO admin_events (kind, target, reason, at) VALUES ($1, $2, $3, $4)",
                                kind, target, reason, time.time())

    async def events_after(self, last: int) -> list[AdminEvent]:
        rows = await self.pool.fetch(
            "SELECT id, kind, target, reason FROM admin_events WHERE id > $1 ORDER BY id LIMIT 1000", last
        )
        return [AdminEvent(int(r[0]), r[1], r[2], r[3]) for r in rows]

    async def last_event(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(id), 0) FROM admin_events"))

    # the contribution ledger -----------------------------------------------------------

    async def add_ledger(self, rows: Iterable[LedgerTuple]) -> None:
        """Add to each host's totals, and to its row for this hour (pruned after LEDGER_HOURS_KEPT)."""
        now, entries = time.time(), [LedgerRow(*row) for row in rows]
        hour = ledger_hour(now)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._add_totals(conn, entries, now)
            await conn.executemany(
                "INSERT INTO host_ledger_hours (hour, host_id, name, requests, tokens) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (hour, host_id) DO UPDATE SET name = excluded.name,"
                " requests = host_ledger_hours.requests + excluded.requests,"
                " tokens = host_ledger_hours.tokens + excluded.tokens",
                [(hour, r.host_id, r.name, r.requests, r.tokens) for r in entries if r.requests or r.tokens],
            )
            await conn.execute("DELETE FROM host_ledger_hours WHERE hour < $1", hour - LEDGER_HOURS_KEPT * 3600)

    @staticmethod
    async def _add_totals(conn: asyncpg.Connection, rows: list[LedgerRow], now: float) -> None:
        await conn.executemany(
            "INSERT INTO host_ledger (host_id, name, token_id, requests, tokens, failures, connected_seconds,"
            " last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (host_id) DO UPDATE SET"
            " name = excluded.name, token_id = excluded.token_id,"
            " requests = host_ledger.requests + excluded.requests, tokens = host_ledger.tokens + excluded.tokens,"
            " failures = host_ledger.failures + excluded.failures,"
            " connected_seconds = host_ledger.connected_seconds + excluded.connected_seconds,"
            " last_seen = excluded.last_seen",
            [(*row, now) for row in rows],
        )

    async def ledger(self) -> list[dict[str, Any]]:
        return listing(LEDGER_LISTING, await self.pool.fetch(LEDGER_QUERY))

    async def leaderboard(self, since: float | None, limit: int) -> list[dict[str, Any]]:
        """Tokens and requests per host name since ``since`` (to the hour; None: all time),
        the ``limit`` largest, banned hosts left out."""
        banned = "SELECT host_id FROM host_identities WHERE banned IS NOT NULL"
        if since is None:
            rows = await self.pool.fetch(
                "SELECT name, SUM(tokens), SUM(requests) FROM host_ledger"
                f" WHERE host_id NOT IN ({banned}) GROUP BY name HAVING SUM(tokens) > 0"
                " ORDER BY 2 DESC, name LIMIT $1", limit,
            )
        else:
            rows = await self.pool.fetch(
                "SELECT name, SUM(tokens), SUM(requests) FROM host_ledger_hours"
                f" WHERE hour >= $1 AND host_id NOT IN ({banned}) GROUP BY name HAVING SUM(tokens) > 0"
                " ORDER BY 2 DESC, name LIMIT $2", ledger_hour(since), limit,
            )
        return leaderboard_of(rows)


def _count(status: str) -> int:
    """Rows touched, from a command status such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1]) if status and status[-1].isdigit() else 0
