"""Both databases' schemas, side by side, and the typed rows read from them (no I/O here).

Each schema is a versioned list of migrations: migration N is applied once, in one
transaction, and recorded in ``schema_version``. Add one by appending to its list; never
edit one that shipped. A change to the tables is made to both lists, together:

==============================  =================  ====================
tables                          SQLite migration   PostgreSQL migration
==============================  =================  ====================
models_seen                     1, 3               1
host_tokens, api_keys,          2, 4               1
key_usage, host_ledger
host_identities, admin_events   3, 4               1
invalidation triggers           (data_version)     2
api_keys.expires and .models    5                  3
host_ledger_hours               6                  3
==============================  =================  ====================

SQLite stores booleans as 0/1 and a key's models as a JSON list; PostgreSQL as BOOLEAN
and TEXT[]. PostgreSQL replicas that start together take :data:`MIGRATION_LOCK` first,
so exactly one applies a migration; its triggers send ``NOTIFY andy_invalidate`` whenever
a key or a host token changes (a key's ``last_used`` excepted), whoever changed it (a
replica, the CLI, psql), so every replica drops its cache of live keys at once. On SQLite
another writer changes ``PRAGMA data_version`` instead (see ``keycache``).

The rows: each query that builds one of the interface's values selects the columns
named here, in this order, and decodes them with the row type beside them, so the two
stores read the same columns into the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from andy_host.coordinator.hosts.enrolment import Identity
from andy_host.coordinator.store.interface import ApiKey, HostToken
from andy_host.coordinator.trust.standing import HostTrust

INVALIDATE_CHANNEL = "andy_invalidate"
MIGRATION_LOCK = 0x616E6479  # PostgreSQL advisory lock id while migrating ("andy")

# SQLite ------------------------------------------------------------------------------

SQLITE_MIGRATIONS: list[list[str]] = [
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

# PostgreSQL --------------------------------------------------------------------------

POSTGRES_MIGRATIONS: list[list[str]] = [
    [  # 1: everything the SQLite store had at its version 4
        """CREATE TABLE models_seen (
            name TEXT PRIMARY KEY, first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION)""",
        """CREATE TABLE host_tokens (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, display TEXT NOT NULL, name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE, created DOUBLE PRECISION NOT NULL, revoked DOUBLE PRECISION,
            trusted BOOLEAN NOT NULL DEFAULT FALSE, banned DOUBLE PRECISION, ban_reason TEXT)""",
        "CREATE INDEX host_tokens_display ON host_tokens (display)",
        """CREATE TABLE api_keys (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, display TEXT NOT NULL, name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE, created DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION,
            revoked DOUBLE PRECISION, daily_limit BIGINT NOT NULL, per_minute BIGINT NOT NULL,
            host_token_id BIGINT REFERENCES host_tokens(id), trusted_only BOOLEAN NOT NULL DEFAULT FALSE)""",
        "CREATE INDEX api_keys_display ON api_keys (display)",
        """CREATE TABLE key_usage (
            key_id BIGINT NOT NULL, day TEXT NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (key_id, day))""",
        """CREATE TABLE host_ledger (
            host_id TEXT PRIMARY KEY, name TEXT NOT NULL, token_id BIGINT,
            requests BIGINT NOT NULL DEFAULT 0, tokens BIGINT NOT NULL DEFAULT 0,
            failures BIGINT NOT NULL DEFAULT 0, connected_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_seen DOUBLE PRECISION)""",
        "CREATE INDEX host_ledger_token ON host_ledger (token_id)",
        """CREATE TABLE host_identities (
            host_id TEXT PRIMARY KEY, token_id BIGINT REFERENCES host_tokens(id), secret_hash TEXT,
            created DOUBLE PRECISION NOT NULL, banned DOUBLE PRECISION, ban_reason TEXT,
            score DOUBLE PRECISION NOT NULL DEFAULT 0, strikes BIGINT NOT NULL DEFAULT 0,
            checks_passed BIGINT NOT NULL DEFAULT 0, checks_failed BIGINT NOT NULL DEFAULT 0, quarantined TEXT)""",
        """CREATE TABLE admin_events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL,
            reason TEXT, at DOUBLE PRECISION NOT NULL)""",
    ],
    [  # 2: every change to keys or host tokens (but a key's last_used) drops every replica's key cache
        f"""CREATE FUNCTION andy_invalidate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' OR (to_jsonb(OLD) - 'last_used') IS DISTINCT FROM (to_jsonb(NEW) - 'last_used')
                THEN PERFORM pg_notify('{INVALIDATE_CHANNEL}', TG_TABLE_NAME); END IF;
                RETURN NULL;
            END $$""",
        """CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
            FOR EACH ROW EXECUTE FUNCTION andy_invalidate()""",
        """CREATE TRIGGER host_tokens_changed AFTER UPDATE OR DELETE ON host_tokens
            FOR EACH ROW EXECUTE FUNCTION andy_invalidate()""",
    ],
    [  # 3: key expiry and model scope (patterns; NULL: every model); the ledger by hour
        "ALTER TABLE api_keys ADD COLUMN expires DOUBLE PRECISION",
        "ALTER TABLE api_keys ADD COLUMN models TEXT[]",
        """CREATE TABLE host_ledger_hours (
            hour BIGINT NOT NULL, host_id TEXT NOT NULL, name TEXT NOT NULL,
            requests BIGINT NOT NULL DEFAULT 0, tokens BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (hour, host_id))""",
    ],
]


# the rows ---------------------------------------------------------------------------

BANNED = "banned by the admin"  # the reason shown for a ban that gave none

KEY_COLUMNS = ("id, display, name, daily_limit, per_minute, host_token_id, trusted_only, hash, expires, models,"
               " revoked")


class KeyRow(NamedTuple):
    """``SELECT {KEY_COLUMNS} FROM api_keys``, its models decoded by the store."""

    id: int
    display: str
    name: str
    daily_limit: int
    per_minute: int
    host_token_id: int | None
    trusted_only: bool
    hash: str
    expires: float | None
    models: tuple[str, ...]
    revoked: float | None

    @classmethod
    def of(cls, row: Sequence[Any], models: tuple[str, ...]) -> KeyRow:
        return cls(int(row[0]), row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8], models,
                   row[10])

    def api_key(self) -> ApiKey:
        return ApiKey(self.id, self.display, self.name, self.daily_limit, self.per_minute, self.host_token_id,
                      trusted_only=self.trusted_only, expires=self.expires, models=self.models, revoked=self.revoked)


TOKEN_COLUMNS = "id, hash, revoked, trusted, banned, ban_reason"


class TokenRow(NamedTuple):
    """``SELECT {TOKEN_COLUMNS} FROM host_tokens``."""

    id: int
    hash: str
    revoked: float | None
    trusted: bool
    banned: float | None
    ban_reason: str | None

    @classmethod
    def of(cls, row: Sequence[Any]) -> TokenRow:
        return cls(int(row[0]), row[1], row[2], bool(row[3]), row[4], row[5])

    def host_token(self) -> HostToken:
        banned = (self.ban_reason or BANNED) if self.banned is not None else None
        return HostToken(id=self.id, trusted=self.trusted, banned=banned)


IDENTITY_COLUMNS = "host_id, token_id, secret_hash, ban_reason, banned"


def identity_of(row: Sequence[Any]) -> Identity:
    """A row of ``SELECT {IDENTITY_COLUMNS} FROM host_identities``."""
    banned = (row[3] or BANNED) if row[4] is not None else None
    return Identity(host_id=row[0], token_id=row[1], secret_hash=row[2], banned=banned)


STANDING_COLUMNS = "score, strikes, checks_passed, checks_failed, quarantined"


def standing_of(row: Sequence[Any]) -> HostTrust:
    """A row of ``SELECT {STANDING_COLUMNS} FROM host_identities``."""
    return HostTrust(score=float(row[0]), strikes=int(row[1]), checks_passed=int(row[2]),
                     checks_failed=int(row[3]), quarantined=row[4])


STANDINGS_QUERY = (
    "SELECT i.host_id, i.score, i.strikes, i.checks_passed, i.checks_failed, i.quarantined,"
    " COALESCE(i.ban_reason, t.ban_reason), t.trusted"
    " FROM host_identities i LEFT JOIN host_tokens t ON t.id = i.token_id"
)


def standings_of(rows: Sequence[Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """``Store.standings`` from the rows of :data:`STANDINGS_QUERY`."""
    return {
        r[0]: {"score": r[1], "strikes": r[2], "checks_passed": r[3], "checks_failed": r[4],
               "quarantined": r[5], "banned": r[6], "trusted": bool(r[7])}
        for r in rows
    }


# the listings (``list_keys``, ``list_tokens``, ``ledger``): the dicts' keys, in the order selected
KEY_LISTING = ("id", "prefix", "name", "created", "last_used", "revoked", "daily_limit", "per_minute",
               "used_today", "host_token", "trusted_only", "expires", "models")
TOKEN_LISTING = ("id", "prefix", "name", "created", "revoked", "trusted", "banned", "requests", "tokens")
LEDGER_LISTING = ("host_id", "name", "host_token", "requests", "tokens", "failures", "connected_seconds",
                  "last_seen")
LEDGER_QUERY = (
    "SELECT l.host_id, l.name, t.display, l.requests, l.tokens, l.failures, l.connected_seconds, l.last_seen"
    " FROM host_ledger l LEFT JOIN host_tokens t ON t.id = l.token_id ORDER BY l.tokens DESC"
)


def listing(names: tuple[str, ...], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows as dicts of ``names`` (one of the listings above)."""
    return [dict(zip(names, tuple(row), strict=True)) for row in rows]


def leaderboard_of(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """``Store.leaderboard`` from rows of (name, SUM(tokens), SUM(requests))."""
    return [{"name": r[0], "tokens": int(r[1]), "requests": int(r[2])} for r in rows]
