"""What each store does on its own, beyond the contract (test_store_contract.py): the key
cache both keep (its bound, its read-through, its recheck timer, on an injected clock),
how another writer's revocation reaches it (SQLite's data_version, PostgreSQL's NOTIFY
and its listener), and SQLite's worker-thread calls."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.store.interface import ApiKey, Store, StoreUnavailable, open_store, utc_day
from andy_host.coordinator.store.keycache import KeyCache
from andy_host.coordinator.store.sqlite import SQLiteDatabase, SQLiteStore, on_worker


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(db, database_url) for open_store."""
    if request.param == "sqlite":
        return str(tmp_path / "c.db"), ""
    return "", request.getfixturevalue("postgres_url")


def a_key(key_id: int, revoked: float | None = None) -> ApiKey:
    return ApiKey(key_id, "andy_sk_x", f"k{key_id}", 1, 1, None, revoked=revoked)


# the key cache ------------------------------------------------------------------------

def test_the_cache_is_due_a_recheck_every_interval_of_its_clock() -> None:
    clock = Clock()
    cache = KeyCache(0.5, clock)  # (steps of 1/4 s: exact in binary)
    assert not cache.due()  # counted from when it was made
    clock.advance(0.25)
    assert not cache.due()
    clock.advance(0.25)
    assert cache.due() and not cache.due()  # and counted again from then
    clock.advance(0.5)
    assert cache.due()
    assert KeyCache(0.5, clock, due_at_once=True).due()  # PostgreSQL's: try the listener at once


def test_the_cache_is_bounded_and_forgets_what_the_database_no_longer_has() -> None:
    cache = KeyCache(0.05, Clock(), size=2)
    cache.remember("a", a_key(1))
    cache.remember("b", a_key(2))
    cache.remember("c", a_key(3))  # full: it starts again empty
    assert list(cache.keys) == ["c"]
    cache.remember("c", None)
    assert cache.keys == {}


async def test_the_cache_reads_through_on_a_miss_and_when_not_trusted() -> None:
    cache = KeyCache(0.05, Clock())
    live = sec.new_secret(sec.API_KEY_PREFIX)
    reads: list[str] = []
    answer: ApiKey | None = a_key(1)

    async def read(digest: str) -> ApiKey | None:
        reads.append(digest)
        return answer

    assert await cache.find(live, read) == a_key(1)
    assert await cache.find(live, read) == a_key(1) and len(reads) == 1  # cached
    answer = a_key(1, revoked=5.0)
    assert await cache.find(live, read, trusted=False) is None and len(reads) == 2  # read, and cached, revoked
    assert await cache.find(live, read) is None and len(reads) == 2
    assert await cache.find(live, read, revoked=True) == a_key(1, revoked=5.0)
    answer = None
    assert await cache.find(live, read, trusted=False) is None and cache.keys == {}
    assert await cache.find("andy_sk_malformed", read) is None and len(reads) == 3  # never read, never cached


async def test_the_cache_serves_a_key_read_before_while_the_database_cannot_answer() -> None:
    cache = KeyCache(0.05, Clock())
    known, unknown = sec.new_secret(sec.API_KEY_PREFIX), sec.new_secret(sec.API_KEY_PREFIX)

    async def down(digest: str) -> ApiKey | None:
        raise StoreUnavailable("ConnectionRefusedError")

    cache.remember(sec.digest(known), a_key(1))
    assert await cache.find(known, down, trusted=False) == a_key(1)
    with pytest.raises(StoreUnavailable):
        await cache.find(unknown, down, trusted=False)


# another writer's revocation ------------------------------------------------------------

async def test_a_revocation_by_another_writer_reaches_the_cache(store_url: tuple[str, str]) -> None:
    """A second store (another replica, or the CLI) revokes; the first refuses the key
    after its next recheck on SQLite (key_recheck on its clock), at the NOTIFY on PostgreSQL."""
    clock = Clock()
    serving, admin = await open_store(*store_url, key_recheck=0.5, clock=clock), await open_store(*store_url)
    try:
        secret, _ = await admin.create_key("k", 10, 10)
        assert await serving.find_key(secret) is not None  # now cached
        if store_url[1]:
            notified, cache = asyncio.Event(), serving.cache  # type: ignore[attr-defined]
            assert isinstance(cache, KeyCache)
            clear = cache.clear
            cache.clear = lambda: (clear(), notified.set())  # type: ignore[method-assign]  # the NOTIFY empties it
            assert await admin.revoke_key(secret[:14])
            await asyncio.wait_for(notified.wait(), timeout=30)
        else:
            assert await admin.revoke_key(secret[:14])
            clock.advance(0.25)
            assert await serving.find_key(secret) is not None  # the cache may be this stale, no more
            clock.advance(0.25)
        assert await serving.find_key(secret) is None
        seen = await serving.find_key(secret, revoked=True)  # the refreshed cache knows when
        assert seen is not None and seen.revoked is not None
    finally:
        await serving.close()
        await admin.close()


async def test_while_the_listener_is_down_keys_are_read_and_it_reopens_when_due(postgres_url: str) -> None:
    from andy_host.coordinator.store.postgres import PostgresStore

    clock = Clock()
    serving = await PostgresStore.open(postgres_url, key_recheck=5.0, clock=clock)
    admin = await open_store("", postgres_url)
    try:
        assert serving.listener.conn is not None
        secret, key_id = await admin.create_key("k", 10, 10)
        assert await serving.find_key(secret) is not None
        await serving.listener.close()  # as if it were lost
        assert not await serving.listener.usable()  # not yet due: no new connection
        assert await admin.revoke_key(str(key_id))
        assert await serving.find_key(secret) is None  # read through: refused at once
        assert serving.listener.conn is None
        clock.advance(5.0)
        assert await serving.listener.usable() and serving.listener.conn is not None
    finally:
        await serving.close()
        await admin.close()


async def test_closing_a_store_logs_no_lost_listener(store_url: tuple[str, str]) -> None:
    """`keys create --database-url` printed `postgres.listener_lost` (a warning) on every
    run, and every replica at every stop: closing the listener is no loss."""
    from structlog.testing import capture_logs

    opened = await open_store(*store_url)
    with capture_logs() as logs:
        await opened.close()
        await asyncio.sleep(0.05)
    assert [e for e in logs if e["event"] == "postgres.listener_lost"] == []


# SQLite's worker thread -------------------------------------------------------------------

@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(str(tmp_path / "c.db"))
    yield opened
    await opened.close()


def test_every_other_sqlite_method_is_one_query_on_the_worker() -> None:
    """The store writes by hand only what its key cache is part of; the rest of the
    protocol is SQLiteDatabase's queries, each through on_worker."""
    protocol = {name for name, member in vars(Store).items() if inspect.iscoroutinefunction(member)}
    by_hand = {name for name in protocol if not isinstance(vars(SQLiteStore).get(name), on_worker)}
    assert by_hand == {"close", "find_key", "update_key", "revoke_key"}
    for name in protocol - by_hand:
        assert vars(SQLiteStore)[name].query is getattr(SQLiteDatabase, name)


async def test_worker_calls_keep_the_querys_signature_and_run_on_the_worker(sqlite_store: SQLiteStore) -> None:
    method = sqlite_store.tokens_served_by_token
    assert method is sqlite_store.tokens_served_by_token  # bound once
    assert str(inspect.signature(method)) == "(token_id: 'int') -> 'int'"
    assert method.__doc__ == SQLiteDatabase.tokens_served_by_token.__doc__
    threads: list[str] = []
    real = sqlite_store._db.last_event
    sqlite_store._db.last_event = lambda: (threads.append(threading.current_thread().name), real())[1]  # type: ignore[method-assign]
    assert await sqlite_store._call(sqlite_store._db.last_event) == 0
    assert threads[0].startswith("sqlite") and threads[0] != threading.current_thread().name


async def test_worker_calls_copy_their_arguments_first(sqlite_store: SQLiteStore) -> None:
    """The coordinator goes on counting into its dicts while the worker writes them: the
    worker writes them as they were when the call was made."""
    _, key_id = await sqlite_store.create_key("k", 100, 100)
    busy, release = threading.Event(), threading.Event()
    blocked = asyncio.get_running_loop().run_in_executor(sqlite_store._executor,
                                                         lambda: (busy.set(), release.wait(10)))
    counts = {(key_id, utc_day()): 3}
    writing = asyncio.create_task(sqlite_store.add_usage(counts, {key_id: 1.0}))
    await asyncio.sleep(0)  # the call is made (and queued behind the blocked worker)
    assert busy.wait(10)
    counts[(key_id, utc_day())] = 100
    counts[(key_id + 1, utc_day())] = 5
    release.set()
    await blocked
    await writing
    assert await sqlite_store.usage_today(key_id) == 3
    assert await sqlite_store.usage_today(key_id + 1) == 0


async def test_a_lookup_queued_before_a_revocation_does_not_keep_the_key_alive(tmp_path: Path) -> None:
    """A key read while its revocation waits behind it on the worker must not stay in the
    cache as live: the revocation's own write does not change data_version, so nothing
    else would ever clear it (no recheck is due on this clock)."""
    store = await SQLiteStore.open(str(tmp_path / "r.db"), clock=lambda: 0.0)
    try:
        secret, key_id = await store.create_key("k", 100, 100)
        busy, release = threading.Event(), threading.Event()
        blocked = asyncio.get_running_loop().run_in_executor(store._executor, lambda: (busy.set(), release.wait(10)))
        assert busy.wait(10)
        lookup = asyncio.create_task(store.find_key(secret))
        await asyncio.sleep(0)  # the read is queued behind the blocked worker
        revoking = asyncio.create_task(store.revoke_key(str(key_id)))
        await asyncio.sleep(0)  # and the revocation behind the read
        release.set()
        await blocked
        assert (await lookup) is not None  # read before the revocation ran: still live then
        assert await revoking
        assert await store.find_key(secret) is None
    finally:
        await store.close()
