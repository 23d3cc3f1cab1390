"""The Store contract, run against SQLite and against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.access.keyscope import NEVER
from andy_host.coordinator.store.interface import AmbiguousIdent, KeyChanges, Store, open_store, utc_day
from andy_host.coordinator.trust.standing import HostTrust


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(db, database_url) for open_store."""
    if request.param == "sqlite":
        return str(tmp_path / "c.db"), ""
    return "", request.getfixturevalue("postgres_url")


@pytest.fixture
async def store(store_url: tuple[str, str]) -> AsyncIterator[Store]:
    opened = await open_store(*store_url)
    yield opened
    await opened.close()


async def test_schema_is_migrated_once_and_reopens(store: Store, store_url: tuple[str, str]) -> None:
    version = await store.schema_version()
    assert version >= 1
    again = await open_store(*store_url)
    try:
        assert await again.schema_version() == version
    finally:
        await again.close()


async def test_keys_usage_and_revocation(store: Store) -> None:
    secret, key_id = await store.create_key("bot", daily_limit=5, per_minute=2, trusted_only=True)
    key = await store.find_key(secret)
    assert key is not None and (key.id, key.name, key.daily_limit, key.per_minute, key.trusted_only) == (
        key_id, "bot", 5, 2, True)
    assert await store.find_key(secret[:-1] + ("a" if secret[-1] != "a" else "b")) is None
    await store.add_usage({(key_id, utc_day()): 3}, {key_id: time.time()})
    await store.add_usage({(key_id, utc_day()): 2}, {})
    assert await store.usage_today(key_id) == 5
    [listed] = await store.list_keys()
    assert listed["used_today"] == 5 and listed["prefix"] == secret[:14] and listed["last_used"] is not None
    assert await store.revoke_key(secret[:14]) is True
    assert await store.revoke_key(str(key_id)) is False  # already revoked
    assert await store.find_key(secret) is None
    gone = await store.find_key(secret, revoked=True)  # for the 401 that says it was revoked, and when
    assert gone is not None and gone.id == key_id and gone.revoked is not None
    assert abs(gone.revoked - time.time()) < 60
    live, _ = await store.create_key("live", 5, 2)
    found = await store.find_key(live, revoked=True)
    assert found is not None and found.revoked is None
    assert await store.find_key(secret[:-1] + ("a" if secret[-1] != "a" else "b"), revoked=True) is None


async def test_tokens_ledger_and_linked_keys(store: Store) -> None:
    token, token_id = await store.create_token("alice", trusted=True)
    found = await store.find_token(token)
    assert found is not None and found.id == token_id and found.trusted and found.banned is None
    await store.create_key("linked", 10, 10, host_token=token[:14])
    assert (await store.list_keys())[0]["host_token"] == token[:14]
    with pytest.raises(KeyError):
        await store.create_key("nope", 1, 1, host_token="andy_ht_nothere")
    await store.add_ledger([("h1", "box", token_id, 2, 100, 1, 5.0)])
    await store.add_ledger([("h1", "box", token_id, 1, 50, 0, 2.5)])
    assert await store.tokens_served_by_token(token_id) == 150
    [row] = await store.ledger()
    assert (row["host_id"], row["requests"], row["tokens"], row["failures"], row["connected_seconds"]) == (
        "h1", 3, 150, 1, 7.5)
    assert (await store.list_tokens())[0]["tokens"] == 150 and await store.host_in_ledger("h1")
    assert await store.revoke_token(str(token_id)) and await store.revoked_tokens() == {token_id}
    assert await store.find_token(token) is None


async def test_identities_standing_bans_and_events(store: Store) -> None:
    token, token_id = await store.create_token("t")
    first = await store.last_event()
    await store.register_identity("h1", token_id, None)
    await store.register_identity("h1", None, "other")  # the first credential stays bound
    identity = await store.identity("h1")
    assert identity is not None and identity.token_id == token_id and identity.banned is None
    await store.save_standing("h1", HostTrust(score=2.5, strikes=1, checks_passed=3, quarantined="slow"))
    standing = await store.standing("h1")
    assert (standing.score, standing.strikes, standing.checks_passed, standing.quarantined) == (2.5, 1, 3, "slow")
    assert (await store.standings())["h1"]["quarantined"] == "slow"
    assert await store.release_host("h1") and (await store.standing("h1")).quarantined is None
    assert await store.ban_host("h1", "junk") == f"token {token_id}"
    assert await store.ban_host("nobody", "x") is None
    await store.add_event("kick", "h1", "60")
    events = await store.events_after(first)
    assert [(e.kind, e.target, e.reason) for e in events] == [("release", "h1", None), ("ban", "h1", "junk"),
                                                               ("kick", "h1", "60")]
    assert await store.last_event() == events[-1].id
    banned = await store.find_token(token)
    assert banned is not None and banned.banned == "junk"
    assert (await store.identity("h1")).banned == "junk"  # type: ignore[union-attr]
    assert await store.host_credential("h1") == (token_id, None)


async def test_key_expiry_scope_and_updates(store: Store) -> None:
    secret, key_id = await store.create_key("scoped", 5, 2, expires=2e9, models=("llama*", "qwen3:8b"))
    key = await store.find_key(secret)
    assert key is not None and key.expires == 2e9 and key.models == ("llama*", "qwen3:8b")
    changes = KeyChanges(name="renamed", daily_limit=50, expires=NEVER, models=(), trusted_only=True)
    assert await store.update_key(secret[:14], changes)
    key = await store.find_key(secret)  # the store's own write empties its cache
    assert key is not None and (key.name, key.daily_limit, key.per_minute, key.expires, key.models,
                                key.trusted_only) == ("renamed", 50, 2, None, (), True)
    [listed] = await store.list_keys()
    assert (listed["expires"], listed["models"], listed["trusted_only"]) == (None, [], True)
    assert await store.update_key(str(key_id), KeyChanges()) is True  # exists, nothing to change
    assert await store.revoke_key(str(key_id))
    assert await store.update_key(str(key_id), KeyChanges(name="x")) is False


async def test_a_prefix_that_two_keys_share_changes_neither(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed prefix holds 30 random bits: with thousands of keys two share one. An
    update or revocation by that prefix must reach no key (it named none of them for
    sure); by id it reaches that key only."""
    real = sec.new_secret

    def colliding(prefix: str) -> str:
        body = "same22" + real(prefix)[len(prefix) + 6: len(prefix) + 32]
        return f"{prefix}{body}{sec._checksum(body)}"

    monkeypatch.setattr(sec, "new_secret", colliding)
    first, first_id = await store.create_key("alice", 5, 2)
    second, second_id = await store.create_key("bob", 5, 2)
    token, _ = await store.create_token("t1")
    await store.create_token("t2")
    prefix = first[: sec.DISPLAY_LEN]
    assert second[: sec.DISPLAY_LEN] == prefix and token[: sec.DISPLAY_LEN] != prefix
    for change in (store.update_key(prefix, KeyChanges(daily_limit=10**6)), store.revoke_key(prefix),
                   store.revoke_token(token[: sec.DISPLAY_LEN]), store.create_key("c", 1, 1, token[: sec.DISPLAY_LEN])):
        with pytest.raises(AmbiguousIdent, match=r"give the id"):
            await change
    assert [(k["daily_limit"], k["revoked"]) for k in await store.list_keys()] == [(5, None), (5, None)]
    assert await store.revoke_key(str(first_id))
    assert await store.find_key(first) is None and await store.find_key(second) is not None
    assert await store.update_key(prefix, KeyChanges(name="bob2"))  # now one live key has it
    assert [k["name"] for k in await store.list_keys() if k["id"] == second_id] == ["bob2"]


async def test_leaderboard_by_period(store: Store) -> None:
    _, token_id = await store.create_token("t")
    await store.add_ledger([("h1", "alice", token_id, 2, 100, 0, 1.0), ("h2", "bob", None, 1, 300, 0, 1.0),
                            ("h3", "idle", None, 0, 0, 0, 1.0)])
    await store.add_ledger([("h1", "alice", token_id, 1, 50, 0, 1.0)])
    assert await store.leaderboard(None, 10) == [{"name": "bob", "tokens": 300, "requests": 1},
                                                 {"name": "alice", "tokens": 150, "requests": 3}]
    assert await store.leaderboard(time.time() - 60, 1) == [{"name": "bob", "tokens": 300, "requests": 1}]
    assert await store.leaderboard(time.time() + 7200, 10) == []
    await store.register_identity("h2", None, "s")
    await store.ban_host("h2", "junk")
    assert [r["name"] for r in await store.leaderboard(None, 10)] == ["alice"]


async def test_models(store: Store) -> None:
    await store.change_models(["a", "b"], [])
    await store.touch_models({"a": 123.0}, ["b"])
    assert await store.known_models() == [("a", 123.0)]


async def test_a_revocation_by_another_writer_reaches_the_cache(store_url: tuple[str, str]) -> None:
    """A second store (another replica, or the CLI) revokes; the first refuses within 50 ms."""
    serving, admin = await open_store(*store_url, key_recheck=0.05), await open_store(*store_url)
    try:
        secret, _ = await admin.create_key("k", 10, 10)
        assert await serving.find_key(secret) is not None  # now cached
        assert await admin.revoke_key(secret[:14])
        deadline = time.monotonic() + 0.5
        while await serving.find_key(secret) is not None:
            assert time.monotonic() < deadline, "the revoked key is still accepted"
            await asyncio.sleep(0.01)
        took = 0.5 - (deadline - time.monotonic())
        assert took < 0.2, took
        seen = await serving.find_key(secret, revoked=True)  # the refreshed cache knows when
        assert seen is not None and seen.revoked is not None
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
