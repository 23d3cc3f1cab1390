"""The store on SQLite (WAL): the embedded default. An idempotent schema that upgrades itself.

:class:`SQLiteDatabase` is the synchronous code; :class:`SQLiteStore` is the
:class:`~andy_host.coordinator.store.interface.Store` the coordinator uses: every query runs on
one worker thread that owns the connection, so a slow disk or a CLI holding the write
lock never stalls the event loop. Live API keys are cached in memory, so a request
costs no query; another process writing the database (the keys CLI) changes SQLite's
``data_version``, which is read at most every ``key_recheck`` seconds and empties the
cache, so a key revoked from the CLI stops working within that time (its own writes
empty it at once). A revoked key is cached too (revocation is final), so its 401 can
say when it was revoked. Usage counters are kept in memory by the caller and flushed every
``flush_interval`` seconds and at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.access.keyscope import NEVER
from andy_host.coordinator.hosts.enrolment import Identity
from andy_host.coordinator.store.interface import (
    KEY_CACHE_SIZE,
    KEY_RECHECK,
    LEDGER_HOURS_KEPT,
    AdminEvent,
    ApiKey,
    HostToken,
    KeyChanges,
    LedgerRow,
    ledger_hour,
    one_id,
    utc_day,
)
from andy_host.coordinator.trust.standing import HostTrust

P = ParamSpec("P")
R = TypeVar("R")

MIGRATIONS: list[list[str]] = [
    [  # 1: models ever served
        "CREATE TABLE IF NOT EXISTS models_seen (name TEXT PRIMARY KEY, first_seen REAL NOT NULL)",
    ],
    [  # 2: keys, host tokens, usage and the contribution ledger
        """CREATE TABLE IF NOT EXISTS host_tokens (
            id INTEGER PRIMARY KEY, display TEXT NOT NULL, name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE, created REAL NOT NULL, revoked REAL)""",
        """CREATE TABLE IF NOT EXISTS api_keys (
            id INTEGER PRIMARY KEY, display TEXT NOT NULL, name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE, created REAL NOT NULL, last_used REAL, revoked REAL,
            daily_limit INTEGER NOT NULL, per_minute INTEGER NOT NULL,
            host_token_id INTEGER REFERENCES host_tokens(id))""",
        """CREATE TABLE IF NOT EXISTS key_usage (
            key_id INTEGER NOT NULL, day TEXT NOT NULL, count INTEGER NOT NULL,
            PRIMARY KEY (key_id, day))""",
        """CREATE TABLE IF NOT EXISTS host_ledger (
            host_id TEXT PRIMARY KEY, name TEXT NOT NULL, token_id INTEGER,
            requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0, connected_seconds REAL NOT NULL DEFAULT 0,
            last_seen REAL)""",
    ],
    [  # 3: host ids bound to the credential that registered them; when a model was last served
        """CREATE TABLE IF NOT EXISTS host_identities (
            host_id TEXT PRIMARY KEY, token_id INTEGER REFERENCES host_tokens(id), secret_hash TEXT,
            created REAL NOT NULL, banned REAL, ban_reason TEXT)""",
        "ALTER TABLE models_seen ADD COLUMN last_seen REAL",
        "UPDATE models_seen SET last_seen = first_seen",
    ],
    [  # 4: trust: trusted and banned tokens, trusted-only keys, each host's standing
        "ALTER TABLE host_tokens ADD COLUMN trusted INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE host_tokens ADD COLUMN banned REAL",
        "ALTER TABLE host_tokens ADD COLUMN ban_reason TEXT",
        "ALTER TABLE api_keys ADD COLUMN trusted_only INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE host_identities ADD COLUMN score REAL NOT NULL DEFAULT 0",
        "ALTER TABLE host_identities ADD COLUMN strikes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE host_identities ADD COLUMN checks_passed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE host_identities ADD COLUMN checks_failed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE host_identities ADD COLUMN quarantined TEXT",
        """CREATE TABLE IF NOT EXISTS admin_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, target TEXT NOT NULL, reason TEXT,
            at REAL NOT NULL)""",
    ],
    [  # 5: key expiry and model scope (a JSON list of patterns; NULL: every model)
        "ALTER TABLE api_keys ADD COLUMN expires REAL",
        "ALTER TABLE api_keys ADD COLUMN models TEXT",
    ],
    [  # 6: the ledger by hour (tokens and requests per host and hour; kept LEDGER_HOURS_KEPT)
        """CREATE TABLE IF NOT EXISTS host_ledger_hours (
            hour INTEGER NOT NULL, host_id TEXT NOT NULL, name TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, host_id))""",
    ],
]


def _models_column(models: tuple[str, ...]) -> str | None:
    return json.dumps(list(models)) if models else None


def _models_of(column: str | None) -> tuple[str, ...]:
    return tuple(json.loads(column)) if column else ()


class SQLiteDatabase:
    """The queries, synchronous; one connection, used from one thread at a time."""

    def __init__(self, path: str, check_same_thread: bool = True) -> None:
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path or ":memory:", isolation_level=None, timeout=10,
                                  check_same_thread=check_same_thread)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def data_version(self) -> int:
        """Changes when another connection wrote the database."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            with self.db:
                self.db.execute("BEGIN")
                for statement in statements:
                    self.db.execute(statement)
                self.db.execute("INSERT INTO schema_version VALUES (?)", (version,))

    def schema_version(self) -> int:
        return int(self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # models ----------------------------------------------------------------------

    def known_models(self) -> list[tuple[str, float]]:
        """Model names served before, with when they were last served."""
        rows = self.db.execute("SELECT name, COALESCE(last_seen, first_seen) FROM models_seen ORDER BY name")
        return [(str(name), float(at)) for name, at in rows]

    def add_models(self, names: Iterable[str]) -> None:
        now = time.time()
        self.db.executemany(
            "INSERT INTO models_seen (name, first_seen, last_seen) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
            [(n, now, now) for n in names],
        )

    def change_models(self, new: Iterable[str], forgotten: Iterable[str]) -> None:
        """Names first served now, and names the registry dropped (one transaction)."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO models_seen (name, first_seen, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
                [(n, now, now) for n in new],
            )
            self.db.executemany("DELETE FROM models_seen WHERE name = ?", [(n,) for n in forgotten])

    def touch_models(self, seen: dict[str, float], forgotten: Iterable[str]) -> None:
        """Record when each model was last served, and forget the ones the registry dropped."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE models_seen SET last_seen = ? WHERE name = ?",
                                [(at, name) for name, at in seen.items()])
            self.db.executemany("DELETE FROM models_seen WHERE name = ?", [(n,) for n in forgotten])

    # host identities -----------------------------------------------------------------

    def identity(self, host_id: str) -> Identity | None:
        row = self.db.execute(
            "SELECT host_id, token_id, secret_hash, ban_reason, banned FROM host_identities WHERE host_id = ?",
            (host_id,),
        ).fetchone()
        if row is None:
            return None
        banned = (row[3] or "banned by the admin") if row[4] is not None else None
        return Identity(host_id=row[0], token_id=row[1], secret_hash=row[2], banned=banned)

    def register_identity(self, host_id: str, token_id: int | None, secret_hash: str | None) -> None:
        self.db.execute(
            "INSERT INTO host_identities (host_id, token_id, secret_hash, created) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (host_id) DO NOTHING",
            (host_id, token_id, secret_hash, time.time()),
        )

    def host_in_ledger(self, host_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM host_ledger WHERE host_id = ?", (host_id,)).fetchone() is not None

    def standing(self, host_id: str) -> HostTrust:
        """A host's standing as last saved (a fresh one for a host never seen)."""
        row = self.db.execute(
            "SELECT score, strikes, checks_passed, checks_failed, quarantined FROM host_identities WHERE host_id = ?",
            (host_id,),
        ).fetchone()
        if row is None:
            return HostTrust()
        return HostTrust(score=float(row[0]), strikes=int(row[1]), checks_passed=int(row[2]),
                         checks_failed=int(row[3]), quarantined=row[4])

    def save_standing(self, host_id: str, trust: HostTrust) -> None:
        self.db.execute(
            "UPDATE host_identities SET score = ?, strikes = ?, checks_passed = ?, checks_failed = ?, quarantined = ?"
            " WHERE host_id = ?",
            (trust.score, trust.strikes, trust.checks_passed, trust.checks_failed, trust.quarantined, host_id),
        )

    # the admin's actions on hosts ------------------------------------------------------

    def host_credential(self, host_id: str) -> tuple[int | None, str | None] | None:
        row = self.db.execute("SELECT token_id, secret_hash FROM host_identities WHERE host_id = ?",
                              (host_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def ban_host(self, host_id: str, reason: str) -> str | None:
        """Ban a host's credential: its token (every host on it), else its own id and
        secret. Returns what was banned, or None for an unknown host."""
        credential = self.host_credential(host_id)
        if credential is None:
            return None
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            if credential[0] is not None:
                self.db.execute("UPDATE host_tokens SET banned = ?, ban_reason = ? WHERE id = ?",
                                (now, reason, credential[0]))
            self.db.execute("UPDATE host_identities SET banned = ?, ban_reason = ? WHERE host_id = ?",
                            (now, reason, host_id))
            self.db.execute("INSERT INTO admin_events (kind, target, reason, at) VALUES ('ban', ?, ?, ?)",
                            (host_id, reason, now))
        return f"token {credential[0]}" if credential[0] is not None else f"host {host_id}"

    def release_host(self, host_id: str) -> bool:
        """End a host's quarantine (and its suspicion)."""
        with self.db:
            self.db.execute("BEGIN")
            cur = self.db.execute("UPDATE host_identities SET quarantined = NULL, score = 0 WHERE host_id = ?",
                                  (host_id,))
            if cur.rowcount:
                self.db.execute("INSERT INTO admin_events (kind, target, reason, at) VALUES ('release', ?, NULL, ?)",
                                (host_id, time.time()))
        return cur.rowcount > 0

    def add_event(self, kind: str, target: str, reason: str | None = None) -> None:
        self.db.execute("INSERT INTO admin_events (kind, target, reason, at) VALUES (?, ?, ?, ?)",
                        (kind, target, reason, time.time()))

    def events_after(self, last: int) -> list[AdminEvent]:
        rows = self.db.execute(
            "SELECT id, kind, target, reason FROM admin_events WHERE id > ? ORDER BY id LIMIT 1000", (last,)
        ).fetchall()
        return [AdminEvent(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def last_event(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM admin_events").fetchone()[0])

    def standings(self) -> dict[str, dict[str, Any]]:
        """Every host's standing, for the admin's listing."""
        rows = self.db.execute(
            "SELECT i.host_id, i.score, i.strikes, i.checks_passed, i.checks_failed, i.quarantined,"
            " COALESCE(i.ban_reason, t.ban_reason), t.trusted"
            " FROM host_identities i LEFT JOIN host_tokens t ON t.id = i.token_id"
        ).fetchall()
        return {
            r[0]: {"score": r[1], "strikes": r[2], "checks_passed": r[3], "checks_failed": r[4],
                   "quarantined": r[5], "banned": r[6], "trusted": bool(r[7])}
            for r in rows
        }

    # API keys --------------------------------------------------------------------

    def create_key(
        self, name: str, daily_limit: int, per_minute: int, host_token: str | None = None,
        trusted_only: bool = False, expires: float | None = None, models: tuple[str, ...] = (),
    ) -> tuple[str, int]:
        token_id = None
        if host_token:
            token_id = self._token_id_by_display(host_token)
        secret = sec.new_secret(sec.API_KEY_PREFIX)
        cur = self.db.execute(
            "INSERT INTO api_keys (display, name, hash, created, daily_limit, per_minute, host_token_id, trusted_only,"
            " expires, models) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (secret[: sec.DISPLAY_LEN], name, sec.digest(secret), time.time(), daily_limit, per_minute, token_id,
             int(trusted_only), expires or None, _models_column(models)),
        )
        return secret, int(cur.lastrowid or 0)

    def find_key(self, digest: str, revoked: bool = False) -> ApiKey | None:
        """The unrevoked key with this digest (expired ones too: the caller says so), or None;
        with ``revoked``, a revoked one too (its ``revoked`` set), so the caller can say so."""
        row = self.db.execute(
            "SELECT id, display, name, daily_limit, per_minute, host_token_id, trusted_only, hash, revoked, expires,"
            " models FROM api_keys WHERE hash = ?",
            (digest,),
        ).fetchone()
        if row is None or (row[8] is not None and not revoked) or not sec.same(row[7], digest):
            return None
        return ApiKey(row[0], row[1], row[2], row[3], row[4], row[5], trusted_only=bool(row[6]), expires=row[9],
                      models=_models_of(row[10]), revoked=row[8])

    def list_keys(self) -> list[dict[str, Any]]:
        day = utc_day()
        rows = self.db.execute(
            "SELECT k.id, k.display, k.name, k.created, k.last_used, k.revoked, k.daily_limit, k.per_minute,"
            " COALESCE(u.count, 0), t.display, k.trusted_only, k.expires, k.models FROM api_keys k"
            " LEFT JOIN key_usage u ON u.key_id = k.id AND u.day = ?"
            " LEFT JOIN host_tokens t ON t.id = k.host_token_id ORDER BY k.id",
            (day,),
        ).fetchall()
        names = ("id", "prefix", "name", "created", "last_used", "revoked", "daily_limit", "per_minute",
                 "used_today", "host_token", "trusted_only", "expires", "models")
        keys = [dict(zip(names, row, strict=True)) for row in rows]
        for key in keys:
            key["trusted_only"], key["models"] = bool(key["trusted_only"]), list(_models_of(key["models"]))
        return keys

    def update_key(self, ident: str, changes: KeyChanges) -> bool:
        """Change a live key's name, limits, expiry, models or trusted-only; False when no
        unrevoked key has that prefix or id."""
        sets: list[str] = []
        values: list[Any] = []
        for column, value in (("name", changes.name), ("daily_limit", changes.daily_limit),
                              ("per_minute", changes.per_minute)):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if changes.expires is not None:
            sets.append("expires = ?")
            values.append(None if changes.expires == NEVER else changes.expires)
        if changes.models is not None:
            sets.append("models = ?")
            values.append(_models_column(changes.models))
        if changes.trusted_only is not None:
            sets.append("trusted_only = ?")
            values.append(int(changes.trusted_only))
        key_id = self._live_id("api_keys", ident, "key")
        if key_id is None or not sets:  # nothing to change: say whether the key exists
            return key_id is not None
        cur = self.db.execute(f"UPDATE api_keys SET {', '.join(sets)} WHERE revoked IS NULL AND id = ?",
                              (*values, key_id))  # the columns are fixed names
        return cur.rowcount > 0

    def _live_id(self, table: str, ident: str, what: str) -> int | None:
        """The id of the one live row of ``table`` (api_keys or host_tokens) that ``ident``
        names (see store.one_id: a prefix that several share is refused)."""
        rows = self.db.execute(f"SELECT id FROM {table} WHERE revoked IS NULL AND"  # a fixed table name
                               " (display = ? OR CAST(id AS TEXT) = ?)", (ident[: sec.DISPLAY_LEN], ident)).fetchall()
        return one_id(ident, (int(r[0]) for r in rows), what)

    def revoke_key(self, ident: str) -> bool:
        key_id = self._live_id("api_keys", ident, "key")
        if key_id is None:
            return False
        cur = self.db.execute("UPDATE api_keys SET revoked = ? WHERE revoked IS NULL AND id = ?", (time.time(), key_id))
        return cur.rowcount > 0

    def usage_today(self, key_id: int) -> int:
        row = self.db.execute(
            "SELECT count FROM key_usage WHERE key_id = ? AND day = ?", (key_id, utc_day())
        ).fetchone()
        return int(row[0]) if row else 0

    def add_usage(self, counts: dict[tuple[int, str], int], last_used: dict[int, float]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO key_usage (key_id, day, count) VALUES (?, ?, ?)"
                " ON CONFLICT (key_id, day) DO UPDATE SET count = count + excluded.count",
                [(k, d, n) for (k, d), n in counts.items() if n],
            )
            self.db.executemany(
                "UPDATE api_keys SET last_used = ? WHERE id = ?", [(t, k) for k, t in last_used.items()]
            )

    # host tokens -----------------------------------------------------------------

    def create_token(self, name: str, trusted: bool = False) -> tuple[str, int]:
        secret = sec.new_secret(sec.HOST_TOKEN_PREFIX)
        cur = self.db.execute(
            "INSERT INTO host_tokens (display, name, hash, created, trusted) VALUES (?, ?, ?, ?, ?)",
            (secret[: sec.DISPLAY_LEN], name, sec.digest(secret), time.time(), int(trusted)),
        )
        return secret, int(cur.lastrowid or 0)

    def _token_id_by_display(self, ident: str) -> int:
        rows = self.db.execute(
            "SELECT id FROM host_tokens WHERE display = ? OR CAST(id AS TEXT) = ?",
            (ident[: sec.DISPLAY_LEN], ident),
        ).fetchall()
        found = one_id(ident, (int(r[0]) for r in rows), "host token")
        if found is None:
            raise KeyError(f"no host token {ident!r}")
        return found

    def find_token(self, secret: str) -> HostToken | None:
        """The live token for this secret (banned ones too: the caller refuses them)."""
        if not sec.well_formed(secret, sec.HOST_TOKEN_PREFIX):
            return None
        wanted = sec.digest(secret)
        row = self.db.execute(
            "SELECT id, hash, revoked, trusted, banned, ban_reason FROM host_tokens WHERE hash = ?", (wanted,)
        ).fetchone()
        if row is None or row[2] is not None or not sec.same(row[1], wanted):
            return None
        banned = (row[5] or "banned by the admin") if row[4] is not None else None
        return HostToken(id=int(row[0]), trusted=bool(row[3]), banned=banned)

    def revoked_tokens(self) -> set[int]:
        return {int(r[0]) for r in self.db.execute("SELECT id FROM host_tokens WHERE revoked IS NOT NULL")}

    def list_tokens(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT t.id, t.display, t.name, t.created, t.revoked, t.trusted, t.ban_reason,"
            " COALESCE(SUM(l.requests), 0), COALESCE(SUM(l.tokens), 0) FROM host_tokens t"
            " LEFT JOIN host_ledger l ON l.token_id = t.id GROUP BY t.id ORDER BY t.id"
        ).fetchall()
        names = ("id", "prefix", "name", "created", "revoked", "trusted", "banned", "requests", "tokens")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def revoke_token(self, ident: str) -> bool:
        token_id = self._live_id("host_tokens", ident, "host token")
        if token_id is None:
            return False
        cur = self.db.execute("UPDATE host_tokens SET revoked = ? WHERE revoked IS NULL AND id = ?",
                              (time.time(), token_id))
        return cur.rowcount > 0

    def tokens_served_by_token(self, token_id: int) -> int:
        row = self.db.execute(
            "SELECT COALESCE(SUM(tokens), 0) FROM host_ledger WHERE token_id = ?", (token_id,)
        ).fetchone()
        return int(row[0])

    # contribution ledger -----------------------------------------------------------

    def add_ledger(self, rows: Iterable[LedgerRow]) -> None:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO host_ledger (host_id, name, token_id, requests, tokens, failures, connected_seconds,"
                " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host_id) DO UPDATE SET"
                " name = excluded.name, token_id = excluded.token_id, requests = requests + excluded.requests,"
                " tokens = tokens + excluded.tokens, failures = failures + excluded.failures,"
                " connected_seconds = connected_seconds + excluded.connected_seconds, last_seen = excluded.last_seen",
                [(*row, now) for row in rows],
            )
            hour = ledger_hour(now)
            self.db.executemany(
                "INSERT INTO host_ledger_hours (hour, host_id, name, requests, tokens) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (hour, host_id) DO UPDATE SET name = excluded.name,"
                " requests = requests + excluded.requests, tokens = tokens + excluded.tokens",
                [(hour, r[0], r[1], r[3], r[4]) for r in rows if r[3] or r[4]],
            )
            self.db.execute("DELETE FROM host_ledger_hours WHERE hour < ?", (hour - LEDGER_HOURS_KEPT * 3600,))

    def leaderboard(self, since: float | None, limit: int) -> list[dict[str, Any]]:
        """Tokens and requests served per host name since ``since`` (to the hour; None:
        all time), the ``limit`` largest, banned hosts left out."""
        banned = "SELECT host_id FROM host_identities WHERE banned IS NOT NULL"
        if since is None:
            query = ("SELECT name, SUM(tokens), SUM(requests) FROM host_ledger"
                     f" WHERE host_id NOT IN ({banned}) GROUP BY name HAVING SUM(tokens) > 0"
                     " ORDER BY 2 DESC, name LIMIT ?")
            rows = self.db.execute(query, (limit,)).fetchall()
        else:
            query = ("SELECT name, SUM(tokens), SUM(requests) FROM host_ledger_hours"
                     f" WHERE hour >= ? AND host_id NOT IN ({banned}) GROUP BY name HAVING SUM(tokens) > 0"
                     " ORDER BY 2 DESC, name LIMIT ?")
            rows = self.db.execute(query, (ledger_hour(since), limit)).fetchall()
        return [{"name": r[0], "tokens": int(r[1]), "requests": int(r[2])} for r in rows]

    def ledger(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT l.host_id, l.name, t.display, l.requests, l.tokens, l.failures, l.connected_seconds, l.last_seen"
            " FROM host_ledger l LEFT JOIN host_tokens t ON t.id = l.token_id ORDER BY l.tokens DESC"
        ).fetchall()
        names = ("host_id", "name", "host_token", "requests", "tokens", "failures", "connected_seconds", "last_seen")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def close(self) -> None:
        self.db.close()


class SQLiteStore:
    """The :class:`~andy_host.coordinator.store.interface.Store` on SQLite: every query on one worker
    thread that owns the connection; live keys cached in memory (see the module docs)."""

    def __init__(self, db: SQLiteDatabase, executor: ThreadPoolExecutor, key_recheck: float) -> None:
        self._db, self._executor = db, executor
        self._keys: dict[str, ApiKey] = {}
        self._key_recheck = key_recheck
        self._keys_checked = time.monotonic()
        self._data_version = -1

    @classmethod
    async def open(cls, path: str, key_recheck: float = KEY_RECHECK) -> SQLiteStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(executor, SQLiteDatabase, path, False)
        store = cls(db, executor, key_recheck)
        store._data_version = await store._call(db.data_version)
        return store

    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        await self._call(self._db.close)
        self._executor.shutdown(wait=True)

    async def schema_version(self) -> int:
        return await self._call(self._db.schema_version)

    async def known_models(self) -> list[tuple[str, float]]:
        return await self._call(self._db.known_models)

    async def change_models(self, new: Iterable[str], forgotten: Iterable[str]) -> None:
        await self._call(self._db.change_models, list(new), list(forgotten))

    async def touch_models(self, seen: dict[str, float], forgotten: Iterable[str]) -> None:
        await self._call(self._db.touch_models, dict(seen), list(forgotten))

    # keys ----------------------------------------------------------------------------

    async def _live_keys(self) -> dict[str, ApiKey]:
        now = time.monotonic()
        if now - self._keys_checked >= self._key_recheck:
            self._keys_checked = now
            version = await self._call(self._db.data_version)
            if version != self._data_version:
                self._data_version = version
                self._keys.clear()
        return self._keys

    async def find_key(self, secret: str, revoked: bool = False) -> ApiKey | None:
        """The live key for this secret, or None (malformed, unknown or revoked); with
        ``revoked``, a revoked key too (``ApiKey.revoked`` set: the caller says so)."""
        wanted = sec.digest(secret)
        cache = await self._live_keys()
        key = cache.get(wanted)
        if key is None and sec.well_formed(secret, sec.API_KEY_PREFIX):
            key = await self._lookup_key(cache, wanted)
        # only well-formed keys are ever cached: live ones, and revoked ones (a revocation is final)
        return None if key is None or (key.revoked is not None and not revoked) else key

    async def _lookup_key(self, cache: dict[str, ApiKey], wanted: str) -> ApiKey | None:
        key = await self._call(self._db.find_key, wanted, True)
        if key is not None:
            if len(cache) >= KEY_CACHE_SIZE:
                cache.clear()
            cache[wanted] = key
        return key

    async def create_key(self, name: str, daily_limit: int, per_minute: int,
                         host_token: str | None = None, trusted_only: bool = False,
                         expires: float | None = None, models: tuple[str, ...] = ()) -> tuple[str, int]:
        return await self._call(self._db.create_key, name, daily_limit, per_minute, host_token, trusted_only,
                                expires, tuple(models))

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self._call(self._db.list_keys)

    async def update_key(self, ident: str, changes: KeyChanges) -> bool:
        self._keys.clear()  # its own writes do not change data_version
        found = await self._call(self._db.update_key, ident, changes)
        self._keys.clear()  # nor a lookup that ran while it was written
        return found

    async def revoke_key(self, ident: str) -> bool:
        self._keys.clear()
        return await self._call(self._db.revoke_key, ident)

    async def usage_today(self, key_id: int) -> int:
        return await self._call(self._db.usage_today, key_id)

    async def add_usage(self, counts: dict[tuple[int, str], int], last_used: dict[int, float]) -> None:
        await self._call(self._db.add_usage, dict(counts), dict(last_used))

    # host tokens -----------------------------------------------------------------------

    async def create_token(self, name: str, trusted: bool = False) -> tuple[str, int]:
        return await self._call(self._db.create_token, name, trusted)

    async def find_token(self, secret: str) -> HostToken | None:
        return await self._call(self._db.find_token, secret)

    async def revoked_tokens(self) -> set[int]:
        return await self._call(self._db.revoked_tokens)

    async def list_tokens(self) -> list[dict[str, Any]]:
        return await self._call(self._db.list_tokens)

    async def revoke_token(self, ident: str) -> bool:
        return await self._call(self._db.revoke_token, ident)

    async def tokens_served_by_token(self, token_id: int) -> int:
        return await self._call(self._db.tokens_served_by_token, token_id)

    # hosts ---------------------------------------------------------------------------

    async def identity(self, host_id: str) -> Identity | None:
        return await self._call(self._db.identity, host_id)

    async def register_identity(self, host_id: str, token_id: int | None, secret_hash: str | None) -> None:
        await self._call(self._db.register_identity, host_id, token_id, secret_hash)

    async def host_in_ledger(self, host_id: str) -> bool:
        return await self._call(self._db.host_in_ledger, host_id)

    async def standing(self, host_id: str) -> HostTrust:
        return await self._call(self._db.standing, host_id)

    async def save_standing(self, host_id: str, trust: HostTrust) -> None:
        await self._call(self._db.save_standing, host_id, trust)

    async def standings(self) -> dict[str, dict[str, Any]]:
        return await self._call(self._db.standings)

    async def host_credential(self, host_id: str) -> tuple[int | None, str | None] | None:
        return await self._call(self._db.host_credential, host_id)

    async def ban_host(self, host_id: str, reason: str) -> str | None:
        return await self._call(self._db.ban_host, host_id, reason)

    async def release_host(self, host_id: str) -> bool:
        return await self._call(self._db.release_host, host_id)

    async def add_event(self, kind: str, target: str, reason: str | None = None) -> None:
        await self._call(self._db.add_event, kind, target, reason)

    async def events_after(self, last: int) -> list[AdminEvent]:
        return await self._call(self._db.events_after, last)

    async def last_event(self) -> int:
        return await self._call(self._db.last_event)

    async def add_ledger(self, rows: Iterable[LedgerRow]) -> None:
        await self._call(self._db.add_ledger, list(rows))

    async def ledger(self) -> list[dict[str, Any]]:
        return await self._call(self._db.ledger)

    async def leaderboard(self, since: float | None, limit: int) -> list[dict[str, Any]]:
        return await self._call(self._db.leaderboard, since, limit)
