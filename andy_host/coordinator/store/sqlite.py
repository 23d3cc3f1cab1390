"""The store on SQLite (WAL): the embedded default. An idempotent schema that upgrades itself
(``schema.SQLITE_MIGRATIONS``).

:class:`SQLiteDatabase` is the synchronous code; :class:`SQLiteStore` is the
:class:`~andy_host.coordinator.store.interface.Store` the coordinator uses: every query runs on
one worker thread that owns the connection, so a slow disk or a CLI holding the write
lock never stalls the event loop. Each of its methods that only runs a query is
``on_worker(SQLiteDatabase.method)``: one descriptor makes it a coroutine with the
query's own signature, which copies its arguments (the caller's dicts and lists go on
changing) and runs it on that thread. Live API keys are cached (``keycache``), so a
request costs no query; another process writing the database (the keys CLI) changes
SQLite's ``data_version``, which is read at most every ``key_recheck`` seconds and
empties the cache, so a key revoked from the CLI stops working within that time (its
own writes empty it at once). Usage counters are kept in memory by the caller and
flushed every ``flush_interval`` seconds and at shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, cast, overload

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
    ledger_hour,
    one_id,
    utc_day,
)
from andy_host.coordinator.store.keycache import KeyCache
from andy_host.coordinator.store.schema import (
    IDENTITY_COLUMNS,
    KEY_COLUMNS,
    KEY_LISTING,
    LEDGER_LISTING,
    LEDGER_QUERY,
    SQLITE_MIGRATIONS,
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

P = ParamSpec("P")
R = TypeVar("R")

MIGRATIONS = SQLITE_MIGRATIONS  # the name the tests (and older code) read


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
        for version, statements in enumerate(SQLITE_MIGRATIONS, start=1):
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

    def known_models(self) -> list[KnownModel]:
        """Model names served before, with when they were last served."""
        rows = self.db.execute("SELECT name, COALESCE(last_seen, first_seen) FROM models_seen ORDER BY name")
        return [KnownModel(str(name), float(at)) for name, at in rows]

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
        row = self.db.execute(f"SELECT {IDENTITY_COLUMNS} FROM host_identities WHERE host_id = ?",
                              (host_id,)).fetchone()
        return None if row is None else identity_of(row)

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
        row = self.db.execute(f"SELECT {STANDING_COLUMNS} FROM host_identities WHERE host_id = ?",
                              (host_id,)).fetchone()
        return HostTrust() if row is None else standing_of(row)

    def save_standing(self, host_id: str, trust: HostTrust) -> None:
        self.db.execute(
            "UPDATE host_identities SET score = ?, strikes = ?, checks_passed = ?, checks_failed = ?, quarantined = ?"
            " WHERE host_id = ?",
            (trust.score, trust.strikes, trust.checks_passed, trust.checks_failed, trust.quarantined, host_id),
        )

    # the admin's actions on hosts ------------------------------------------------------

    def host_credential(self, host_id: str) -> Credential | None:
        row = self.db.execute("SELECT token_id, secret_hash FROM host_identities WHERE host_id = ?",
                              (host_id,)).fetchone()
        return None if row is None else Credential(row[0], row[1])

    def ban_host(self, host_id: str, reason: str) -> str | None:
        """Ban a host's credential: its token (every host on it), else its own id and
        secret. Returns what was banned, or None for an unknown host."""
        credential = self.host_credential(host_id)
        if credential is None:
            return None
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            if credential.token_id is not None:
                self.db.execute("UPDATE host_tokens SET banned = ?, ban_reason = ? WHERE id = ?",
                                (now, reason, credential.token_id))
            self.db.execute("UPDATE host_identities SET banned = ?, ban_reason = ? WHERE host_id = ?",
                            (now, reason, host_id))
            self.db.execute("INSERT INTO admin_events (kind, target, reason, at) VALUES ('ban', ?, ?, ?)",
                            (host_id, reason, now))
        return f"token {credential.token_id}" if credential.token_id is not None else f"host {host_id}"

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
        return standings_of(self.db.execute(STANDINGS_QUERY).fetchall())

    # API keys --------------------------------------------------------------------

    def create_key(
        self, name: str, daily_limit: int, per_minute: int, host_token: str | None = None,
        trusted_only: bool = False, expires: float | None = None, models: tuple[str, ...] = (),
    ) -> Created:
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
        return Created(secret, int(cur.lastrowid or 0))

    def find_key(self, digest: str, revoked: bool = False) -> ApiKey | None:
        """The unrevoked key with this digest (expired ones too: the caller says so), or None;
        with ``revoked``, a revoked one too (its ``revoked`` set), so the caller can say so."""
        row = self.db.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?", (digest,)).fetchone()
        if row is None:
            return None
        key = KeyRow.of(row, _models_of(row[9]))
        if (key.revoked is not None and not revoked) or not sec.same(key.hash, digest):
            return None
        return key.api_key()

    def list_keys(self) -> list[dict[str, Any]]:
        day = utc_day()
        rows = self.db.execute(
            "SELECT k.id, k.display, k.name, k.created, k.last_used, k.revoked, k.daily_limit, k.per_minute,"
            " COALESCE(u.count, 0), t.display, k.trusted_only, k.expires, k.models FROM api_keys k"
            " LEFT JOIN key_usage u ON u.key_id = k.id AND u.day = ?"
            " LEFT JOIN host_tokens t ON t.id = k.host_token_id ORDER BY k.id",
            (day,),
        ).fetchall()
        keys = listing(KEY_LISTING, rows)
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

    def create_token(self, name: str, trusted: bool = False) -> Created:
        secret = sec.new_secret(sec.HOST_TOKEN_PREFIX)
        cur = self.db.execute(
            "INSERT INTO host_tokens (display, name, hash, created, trusted) VALUES (?, ?, ?, ?, ?)",
            (secret[: sec.DISPLAY_LEN], name, sec.digest(secret), time.time(), int(trusted)),
        )
        return Created(secret, int(cur.lastrowid or 0))

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
        row = self.db.execute(f"SELECT {TOKEN_COLUMNS} FROM host_tokens WHERE hash = ?", (wanted,)).fetchone()
        token = None if row is None else TokenRow.of(row)
        if token is None or token.revoked is not None or not sec.same(token.hash, wanted):
            return None
        return token.host_token()

    def revoked_tokens(self) -> set[int]:
        return {int(r[0]) for r in self.db.execute("SELECT id FROM host_tokens WHERE revoked IS NOT NULL")}

    def list_tokens(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT t.id, t.display, t.name, t.created, t.revoked, t.trusted, t.ban_reason,"
            " COALESCE(SUM(l.requests), 0), COALESCE(SUM(l.tokens), 0) FROM host_tokens t"
            " LEFT JOIN host_ledger l ON l.token_id = t.id GROUP BY t.id ORDER BY t.id"
        ).fetchall()
        return listing(TOKEN_LISTING, rows)

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

    def add_ledger(self, rows: Iterable[LedgerTuple]) -> None:
        now, entries = time.time(), [LedgerRow(*row) for row in rows]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO host_ledger (host_id, name, token_id, requests, tokens, failures, connected_seconds,"
                " last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host_id) DO UPDATE SET"
                " name = excluded.name, token_id = excluded.token_id, requests = requests + excluded.requests,"
                " tokens = tokens + excluded.tokens, failures = failures + excluded.failures,"
                " connected_seconds = connected_seconds + excluded.connected_seconds, last_seen = excluded.last_seen",
                [(*row, now) for row in entries],
            )
            hour = ledger_hour(now)
            self.db.executemany(
                "INSERT INTO host_ledger_hours (hour, host_id, name, requests, tokens) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (hour, host_id) DO UPDATE SET name = excluded.name,"
                " requests = requests + excluded.requests, tokens = tokens + excluded.tokens",
                [(hour, r.host_id, r.name, r.requests, r.tokens) for r in entries if r.requests or r.tokens],
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
        return leaderboard_of(rows)

    def ledger(self) -> list[dict[str, Any]]:
        return listing(LEDGER_LISTING, self.db.execute(LEDGER_QUERY).fetchall())

    def close(self) -> None:
        self.db.close()


def _frozen(value: object) -> object:
    """An argument as the worker thread may read it while its caller goes on: a copy of a
    dict, a list of any other iterable (a list the caller keeps filling, a generator);
    strings, tuples and other values as they are."""
    if isinstance(value, str | bytes | tuple):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Iterable):
        return list(value)
    return value


def _bound(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Callable[[], R]:
    """``fn`` with its arguments copied now (see :func:`_frozen`), to run later on the worker."""
    frozen_args = [_frozen(a) for a in args]
    frozen_kwargs = {name: _frozen(a) for name, a in kwargs.items()}
    run = cast("Callable[..., R]", fn)  # the same arguments, copied
    return lambda: run(*frozen_args, **frozen_kwargs)


class on_worker(Generic[P, R]):
    """``name = on_worker(SQLiteDatabase.name)`` in :class:`SQLiteStore`: a coroutine method
    with the query's own parameters and result, which runs it on the store's worker thread."""

    def __init__(self, query: Callable[Concatenate[SQLiteDatabase, P], R]) -> None:
        self.query = query
        self.name = query.__name__
        signature = inspect.signature(query)  # for help() and inspect: the query's, without its self
        self.signature = signature.replace(parameters=tuple(signature.parameters.values())[1:])

    def __set_name__(self, owner: type[SQLiteStore], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, store: None, owner: type[SQLiteStore]) -> Self: ...
    @overload
    def __get__(self, store: SQLiteStore, owner: type[SQLiteStore]) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(self, store: SQLiteStore | None,
                owner: type[SQLiteStore]) -> Self | Callable[P, Coroutine[Any, Any, R]]:
        if store is None:
            return self
        query, db = self.query, store._db

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return await store._call(query, db, *args, **kwargs)

        call.__name__, call.__qualname__, call.__doc__ = self.name, f"SQLiteStore.{self.name}", query.__doc__
        vars(call)["__signature__"] = self.signature  # what inspect.signature reads
        store.__dict__[self.name] = call  # bound once per store (this descriptor defines no __set__)
        return call


class SQLiteStore:
    """The :class:`~andy_host.coordinator.store.interface.Store` on SQLite: every query on one worker
    thread that owns the connection; live keys cached in memory (see the module docs)."""

    def __init__(self, db: SQLiteDatabase, executor: ThreadPoolExecutor, key_recheck: float,
                 clock: Clock = time.monotonic) -> None:
        self._db, self._executor = db, executor
        self.cache = KeyCache(key_recheck, clock)
        self._data_version = -1

    @classmethod
    async def open(cls, path: str, key_recheck: float = KEY_RECHECK, *, clock: Clock = time.monotonic) -> SQLiteStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(executor, SQLiteDatabase, path, False)
        store = cls(db, executor, key_recheck, clock)
        store._data_version = await store._call(db.data_version)
        return store

    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` on the worker thread, its arguments copied first."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, _bound(fn, *args, **kwargs))

    async def close(self) -> None:
        await self._call(self._db.close)
        self._executor.shutdown(wait=True)

    # keys: the cache ----------------------------------------------------------------

    async def find_key(self, secret: str, revoked: bool = False) -> ApiKey | None:
        """The live key for this secret, or None (malformed, unknown or revoked); with
        ``revoked``, a revoked key too (``ApiKey.revoked`` set: the caller says so)."""
        if self.cache.due():
            version = await self._call(self._db.data_version)
            if version != self._data_version:
                self._data_version = version
                self.cache.clear()
        return await self.cache.find(secret, self._read_key, revoked)

    async def _read_key(self, digest: str) -> ApiKey | None:
        return await self._call(self._db.find_key, digest, True)

    async def update_key(self, ident: str, changes: KeyChanges) -> bool:
        self.cache.clear()  # its own writes do not change data_version
        found = await self._call(self._db.update_key, ident, changes)
        self.cache.clear()  # nor a lookup that ran while it was written
        return found

    async def revoke_key(self, ident: str) -> bool:
        self.cache.clear()  # as update_key: its own write does not change data_version,
        revoked = await self._call(self._db.revoke_key, ident)
        self.cache.clear()  # and a lookup queued before it may have cached the key as live
        return revoked

    # every other method: one query on the worker ---------------------------------------

    schema_version = on_worker(SQLiteDatabase.schema_version)
    known_models = on_worker(SQLiteDatabase.known_models)
    change_models = on_worker(SQLiteDatabase.change_models)
    touch_models = on_worker(SQLiteDatabase.touch_models)

    create_key = on_worker(SQLiteDatabase.create_key)
    list_keys = on_worker(SQLiteDatabase.list_keys)
    usage_today = on_worker(SQLiteDatabase.usage_today)
    add_usage = on_worker(SQLiteDatabase.add_usage)

    create_token = on_worker(SQLiteDatabase.create_token)
    find_token = on_worker(SQLiteDatabase.find_token)
    revoked_tokens = on_worker(SQLiteDatabase.revoked_tokens)
    list_tokens = on_worker(SQLiteDatabase.list_tokens)
    revoke_token = on_worker(SQLiteDatabase.revoke_token)
    tokens_served_by_token = on_worker(SQLiteDatabase.tokens_served_by_token)

    identity = on_worker(SQLiteDatabase.identity)
    register_identity = on_worker(SQLiteDatabase.register_identity)
    host_in_ledger = on_worker(SQLiteDatabase.host_in_ledger)
    standing = on_worker(SQLiteDatabase.standing)
    save_standing = on_worker(SQLiteDatabase.save_standing)
    standings = on_worker(SQLiteDatabase.standings)
    host_credential = on_worker(SQLiteDatabase.host_credential)

    ban_host = on_worker(SQLiteDatabase.ban_host)
    release_host = on_worker(SQLiteDatabase.release_host)
    add_event = on_worker(SQLiteDatabase.add_event)
    events_after = on_worker(SQLiteDatabase.events_after)
    last_event = on_worker(SQLiteDatabase.last_event)

    add_ledger = on_worker(SQLiteDatabase.add_ledger)
    ledger = on_worker(SQLiteDatabase.ledger)
    leaderboard = on_worker(SQLiteDatabase.leaderboard)
