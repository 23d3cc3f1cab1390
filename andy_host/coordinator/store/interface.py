"""The coordinator's durable state, behind one interface: keys, host tokens, usage, the
ledger, host identities and standing, the models ever served, the admin's actions.

This module owns the :class:`Store` protocol and the values that cross it (:class:`ApiKey`,
:class:`LedgerRow`, :class:`Created`, ...), which both stores return alike. The package:

- ``schema``: both databases' migrations side by side, and the typed rows read from them;
- ``keycache``: the one cache of live keys both stores keep in memory;
- ``sqlite.SQLiteStore``: one file (or memory), the zero-setup default; its queries run
  on one worker thread;
- ``postgres.PostgresStore``: PostgreSQL through asyncpg, for replicated coordinators
  (``--database-url postgresql://...``).

:func:`open_store` picks one from the configuration. How a listed key or token is shown
is ``admin.listing``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Protocol

from aiohttp import web

from andy_host.coordinator.hosts.enrolment import Identity
from andy_host.coordinator.trust.standing import HostTrust

KEY_CACHE_SIZE = 10_000  # live keys remembered in memory
KEY_RECHECK = 0.05  # seconds: how stale the cache of live keys may be, at most
LEDGER_HOURS_KEPT = 8 * 24  # hourly ledger rows kept: enough for the last week's leaderboard

Clock = Callable[[], float]  # seconds, monotonic: when the key cache is due a recheck


class LedgerRow(NamedTuple):
    """What a host did since the last flush, for ``add_ledger`` (which also takes the
    plain tuple of these fields, :data:`LedgerTuple`)."""

    host_id: str
    name: str
    token_id: int | None
    requests: int
    tokens: int
    failures: int
    connected_seconds: float


LedgerTuple = tuple[str, str, int | None, int, int, int, float]  # a LedgerRow's fields, unnamed


class KnownModel(NamedTuple):
    """A model served before (``known_models``), and when it was last served."""

    name: str
    last_seen: float


class Created(NamedTuple):
    """A new key or host token: its secret (shown once, stored only as a digest) and id."""

    secret: str
    id: int


class Credential(NamedTuple):
    """What a host registered with (``host_credential``): its token, else its own secret's hash."""

    token_id: int | None
    secret_hash: str | None


def ledger_hour(at: float) -> int:
    """The start of the UTC hour holding ``at`` (epoch seconds): the ledger's time dimension."""
    return int(at // 3600) * 3600


class StoreUnavailable(Exception):
    """The database cannot answer now (PostgreSQL restarting or unreachable)."""


def utc_day(now: float | None = None) -> str:
    """The UTC date as YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


@dataclass(slots=True)
class ApiKey:
    id: int
    display: str
    name: str
    daily_limit: int
    per_minute: int
    host_token_id: int | None
    trusted_only: bool = False
    expires: float | None = None  # seconds since the epoch; None: never (see keyscope.py)
    models: tuple[str, ...] = ()  # model patterns the key may use; (): every model
    revoked: float | None = None  # when it was revoked (only find_key(..., revoked=True) returns such keys)


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """What ``update_key`` changes; None leaves a field as it is. ``expires`` of
    ``keyscope.NEVER`` (0) removes the expiry; ``models`` of () allows every model."""

    name: str | None = None
    daily_limit: int | None = None
    per_minute: int | None = None
    expires: float | None = None
    models: tuple[str, ...] | None = None
    trusted_only: bool | None = None

    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


class AmbiguousIdent(KeyError):
    """A listed prefix that several live keys (or tokens) share: only the id tells them
    apart (a prefix holds 30 random bits, so a pool of thousands of keys may repeat one)."""

    def __str__(self) -> str:
        return str(self.args[0])


def one_id(ident: str, ids: Iterable[int], what: str) -> int | None:
    """The one id that ``ident`` (an id, or a listed prefix) names among ``ids``, the live
    rows that match it either way; None for none; :class:`AmbiguousIdent` when a prefix
    names several: an update or revocation must never reach a key the admin did not mean."""
    found = sorted(set(ids))
    if any(str(i) == ident for i in found):
        return int(ident)
    if len(found) > 1:
        raise AmbiguousIdent(f"{ident!r} is the prefix of {len(found)} live {what}s (ids "
                             f"{', '.join(map(str, found))}): give the id instead")
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class HostToken:
    """A live host token as the coordinator sees it."""

    id: int
    trusted: bool
    banned: str | None  # the ban's reason, when banned


@dataclass(frozen=True, slots=True)
class AdminEvent:
    """An admin's action for every running coordinator to apply (ban, release, kick)."""

    id: int
    kind: str
    target: str
    reason: str | None


class Store(Protocol):
    """Every read and write of durable state. Secrets are passed in clear and stored
    only as digests; ``ident`` arguments are a listed prefix or an id."""

    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...

    # models
    async def known_models(self) -> list[KnownModel]: ...
    async def change_models(self, new: Iterable[str], forgotten: Iterable[str]) -> None: ...
    async def touch_models(self, seen: dict[str, float], forgotten: Iterable[str]) -> None: ...

    # API keys and usage
    async def create_key(self, name: str, daily_limit: int, per_minute: int,
                         host_token: str | None = None, trusted_only: bool = False,
                         expires: float | None = None, models: tuple[str, ...] = ()) -> Created: ...
    # expired keys too, and with revoked=True revoked ones (ApiKey.revoked set): the caller says so
    async def find_key(self, secret: str, revoked: bool = False) -> ApiKey | None: ...
    async def list_keys(self) -> list[dict[str, Any]]: ...
    async def update_key(self, ident: str, changes: KeyChanges) -> bool: ...  # False: no live key
    async def revoke_key(self, ident: str) -> bool: ...
    async def usage_today(self, key_id: int) -> int: ...
    async def add_usage(self, counts: dict[tuple[int, str], int], last_used: dict[int, float]) -> None: ...

    # host tokens
    async def create_token(self, name: str, trusted: bool = False) -> Created: ...
    async def find_token(self, secret: str) -> HostToken | None: ...
    async def revoked_tokens(self) -> set[int]: ...
    async def list_tokens(self) -> list[dict[str, Any]]: ...
    async def revoke_token(self, ident: str) -> bool: ...
    async def tokens_served_by_token(self, token_id: int) -> int: ...

    # host identities and standing
    async def identity(self, host_id: str) -> Identity | None: ...
    async def register_identity(self, host_id: str, token_id: int | None, secret_hash: str | None) -> None: ...
    async def host_in_ledger(self, host_id: str) -> bool: ...
    async def standing(self, host_id: str) -> HostTrust: ...
    async def save_standing(self, host_id: str, trust: HostTrust) -> None: ...
    async def standings(self) -> dict[str, dict[str, Any]]: ...
    async def host_credential(self, host_id: str) -> Credential | None: ...

    # the admin's actions
    async def ban_host(self, host_id: str, reason: str) -> str | None: ...
    async def release_host(self, host_id: str) -> bool: ...
    async def add_event(self, kind: str, target: str, reason: str | None = None) -> None: ...
    async def events_after(self, last: int) -> list[AdminEvent]: ...
    async def last_event(self) -> int: ...

    # the contribution ledger
    async def add_ledger(self, rows: Iterable[LedgerTuple]) -> None: ...  # LedgerRows, or plain tuples
    async def ledger(self) -> list[dict[str, Any]]: ...
    async def leaderboard(self, since: float | None, limit: int) -> list[dict[str, Any]]:
        """``[{"name", "tokens", "requests"}]`` per host name, most tokens first, at most
        ``limit``: since ``since`` (epoch seconds, counted from the start of its hour,
        from the hourly rows ``add_ledger`` also writes and prunes after
        ``LEDGER_HOURS_KEPT``), or all time when None. Names with no tokens and banned
        hosts are left out."""
        ...


async def open_store(db: str, database_url: str = "", key_recheck: float = KEY_RECHECK,
                     pool_size: int = 10, connect_timeout: float = 5.0, clock: Clock = time.monotonic) -> Store:
    """The store the configuration names: PostgreSQL when ``database_url`` is set,
    else SQLite at ``db`` ("" or ":memory:" keeps it in memory). ``clock`` times the key
    cache's rechecks (tests pass their own)."""
    if database_url:
        from andy_host.coordinator.store.postgres import PostgresStore

        store: Store = await PostgresStore.open(database_url, key_recheck, pool_size, connect_timeout, clock=clock)
        return store
    from andy_host.coordinator.store.sqlite import SQLiteStore

    return await SQLiteStore.open(db, key_recheck, clock=clock)


STORE = web.AppKey("store", Store)
