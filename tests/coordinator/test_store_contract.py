"""The Store contract: every method of the Store protocol, run against SQLite and against a
real PostgreSQL (the PostgreSQL cases are skipped, with the reason, where its binaries
are absent). What one store only does (its key cache's invalidation, its worker thread,
its listener) is in test_store.py."""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.access.keyscope import NEVER
from andy_host.coordinator.store.interface import (
    AmbiguousIdent,
    ApiKey,
    Created,
    Credential,
    KeyChanges,
    KnownModel,
    LedgerRow,
    Store,
    open_store,
    utc_day,
)
from andy_host.coordinator.store.schema import KEY_LISTING, LEDGER_LISTING, TOKEN_LISTING
from andy_host.coordinator.trust.standing import HostTrust

PROTOCOL = sorted(name for name, member in vars(Store).items()
                  if not name.startswith("_") and inspect.iscoroutinefunction(member))


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


def other(secret: str) -> str:
    """The same secret with its last character changed (its checksum then fails)."""
    return secret[:-1] + ("a" if secret[-1] != "a" else "b")


def test_every_protocol_method_is_exercised_here() -> None:
    """The contract covers the whole protocol: each of its methods is called in this module."""
    source = Path(__file__).read_text()
    called = set(re.findall(r"\b(?:store|again|admin)\.(\w+)\(", source))
    assert len(PROTOCOL) == 33 and "close" in PROTOCOL and "schema_version" in PROTOCOL
    assert [name for name in PROTOCOL if name not in called] == []


async def test_each_store_has_the_protocols_signatures(store: Store) -> None:
    """Both stores take the protocol's parameters, with its defaults, each method a coroutine."""
    for name in PROTOCOL:
        method = getattr(store, name)
        assert inspect.iscoroutinefunction(method), name
        wanted = list(inspect.signature(getattr(Store, name)).parameters.values())[1:]  # less self
        got = list(inspect.signature(method).parameters.values())
        assert [(p.name, p.kind, p.default) for p in got] == [(p.name, p.kind, p.default) for p in wanted], name


async def test_schema_is_migrated_once_and_reopens(store: Store, store_url: tuple[str, str]) -> None:
    version = await store.schema_version()
    assert version >= 1
    again = await open_store(*store_url)
    try:
        assert await again.schema_version() == version
    finally:
        await again.close()


async def test_keys_usage_and_revocation(store: Store) -> None:
    created = await store.create_key("bot", daily_limit=5, per_minute=2, trusted_only=True)
    assert isinstance(created, Created)
    secret, key_id = created
    assert (created.secret, created.id) == (secret, key_id) and secret.startswith(sec.API_KEY_PREFIX)
    key = await store.find_key(secret)
    assert key == ApiKey(key_id, secret[: sec.DISPLAY_LEN], "bot", 5, 2, None, trusted_only=True)
    assert await store.find_key(other(secret)) is None
    assert await store.find_key("not a key") is None
    await store.add_usage({(key_id, utc_day()): 3, (key_id, "2000-01-01"): 7}, {key_id: time.time()})
    await store.add_usage({(key_id, utc_day()): 2, (key_id + 1, utc_day()): 0}, {})
    assert await store.usage_today(key_id) == 5
    assert await store.usage_today(key_id + 1) == 0
    [listed] = await store.list_keys()
    assert tuple(listed) == KEY_LISTING
    assert listed["used_today"] == 5 and listed["prefix"] == secret[:14] and listed["last_used"] is not None
    assert (listed["id"], listed["name"], listed["daily_limit"], listed["per_minute"], listed["revoked"],
            listed["host_token"], listed["trusted_only"], listed["expires"], listed["models"]) == (
        key_id, "bot", 5, 2, None, None, True, None, [])
    assert await store.revoke_key(secret[:14]) is True
    assert await store.revoke_key(str(key_id)) is False  # already revoked
    assert await store.revoke_key("andy_sk_nothere") is False
    assert await store.find_key(secret) is None
    gone = await store.find_key(secret, revoked=True)  # for the 401 that says it was revoked, and when
    assert gone is not None and gone.id == key_id and gone.revoked is not None
    assert abs(gone.revoked - time.time()) < 60
    assert (await store.list_keys())[0]["revoked"] == gone.revoked
    live, _ = await store.create_key("live", 5, 2)
    found = await store.find_key(live, revoked=True)
    assert found is not None and found.revoked is None
    assert await store.find_key(other(secret), revoked=True) is None


async def test_tokens_ledger_and_linked_keys(store: Store) -> None:
    token, token_id = await store.create_token("alice", trusted=True)
    assert token.startswith(sec.HOST_TOKEN_PREFIX)
    found = await store.find_token(token)
    assert found is not None and found.id == token_id and found.trusted and found.banned is None
    assert await store.find_token(other(token)) is None and await store.find_token("andy_ht_short") is None
    _, key_id = await store.create_key("linked", 10, 10, host_token=token[:14])
    assert (await store.list_keys())[0]["host_token"] == token[:14]
    _, by_id = await store.create_key("by id", 10, 10, host_token=str(token_id))
    assert [k["host_token"] for k in await store.list_keys()] == [token[:14], token[:14]] and by_id != key_id
    with pytest.raises(KeyError):
        await store.create_key("nope", 1, 1, host_token="andy_ht_nothere")
    assert await store.tokens_served_by_token(token_id) == 0
    await store.add_ledger([("h1", "box", token_id, 2, 100, 1, 5.0)])  # a plain tuple, or
    await store.add_ledger([LedgerRow("h1", "box", token_id, 1, 50, 0, 2.5)])  # the named one
    assert await store.tokens_served_by_token(token_id) == 150
    assert await store.tokens_served_by_token(token_id + 1) == 0
    [row] = await store.ledger()
    assert tuple(row) == LEDGER_LISTING
    assert (row["host_id"], row["name"], row["host_token"], row["requests"], row["tokens"], row["failures"],
            row["connected_seconds"]) == ("h1", "box", token[:14], 3, 150, 1, 7.5)
    assert abs(row["last_seen"] - time.time()) < 60
    [listed] = await store.list_tokens()
    assert tuple(listed) == TOKEN_LISTING
    assert (listed["id"], listed["prefix"], listed["name"], bool(listed["trusted"]), listed["revoked"],
            listed["banned"], listed["requests"], listed["tokens"]) == (
        token_id, token[:14], "alice", True, None, None, 3, 150)
    assert await store.host_in_ledger("h1") and not await store.host_in_ledger("h2")
    assert await store.revoked_tokens() == set()
    assert await store.revoke_token(str(token_id)) and await store.revoked_tokens() == {token_id}
    assert await store.revoke_token(str(token_id)) is False
    assert await store.find_token(token) is None
    assert (await store.list_tokens())[0]["revoked"] is not None


async def test_identities_standing_bans_and_events(store: Store) -> None:
    token, token_id = await store.create_token("t")
    first = await store.last_event()
    assert await store.events_after(first) == []
    assert await store.identity("h1") is None and await store.host_credential("h1") is None
    assert await store.standing("h1") == HostTrust()  # a host never seen starts afresh
    await store.register_identity("h1", token_id, None)
    await store.register_identity("h1", None, "other")  # the first credential stays bound
    identity = await store.identity("h1")
    assert identity is not None and identity.token_id == token_id and identity.banned is None
    assert identity.secret_hash is None
    await store.save_standing("h1", HostTrust(score=2.5, strikes=1, checks_passed=3, checks_failed=2,
                                              quarantined="slow"))
    standing = await store.standing("h1")
    assert (standing.score, standing.strikes, standing.checks_passed, standing.checks_failed,
            standing.quarantined) == (2.5, 1, 3, 2, "slow")
    assert (await store.standings())["h1"] == {"score": 2.5, "strikes": 1, "checks_passed": 3, "checks_failed": 2,
                                               "quarantined": "slow", "banned": None, "trusted": False}
    assert await store.release_host("h1") and (await store.standing("h1")).quarantined is None
    assert (await store.standing("h1")).score == 0
    assert await store.release_host("nobody") is False  # and no event for it
    assert await store.ban_host("h1", "junk") == f"token {token_id}"
    assert await store.ban_host("nobody", "x") is None
    await store.add_event("kick", "h1", "60")
    await store.add_event("kick", "h1")
    events = await store.events_after(first)
    assert [(e.kind, e.target, e.reason) for e in events] == [("release", "h1", None), ("ban", "h1", "junk"),
                                                               ("kick", "h1", "60"), ("kick", "h1", None)]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert await store.last_event() == events[-1].id
    assert [e.kind for e in await store.events_after(events[1].id)] == ["kick", "kick"]
    banned = await store.find_token(token)
    assert banned is not None and banned.banned == "junk"
    assert (await store.identity("h1")).banned == "junk"  # type: ignore[union-attr]
    assert (await store.standings())["h1"]["banned"] == "junk"
    credential = await store.host_credential("h1")
    assert credential == (token_id, None) and isinstance(credential, Credential)
    assert credential.token_id == token_id and credential.secret_hash is None


async def test_a_host_without_a_token_is_banned_by_its_own_id(store: Store) -> None:
    await store.register_identity("open", None, "hash")
    assert await store.host_credential("open") == Credential(None, "hash")
    await store.save_standing("nobody", HostTrust(score=9.0))  # no identity: nothing saved
    assert await store.standing("nobody") == HostTrust()
    assert await store.ban_host("open", "") == "host open"
    identity = await store.identity("open")
    assert identity is not None and identity.banned == "banned by the admin"  # no reason given
    assert (await store.standings())["open"]["banned"] == ""


async def test_key_expiry_scope_and_updates(store: Store) -> None:
    secret, key_id = await store.create_key("scoped", 5, 2, expires=2e9, models=("llama*", "qwen3:8b"))
    key = await store.find_key(secret)
    assert key is not None and key.expires == 2e9 and key.models == ("llama*", "qwen3:8b")
    old, _ = await store.create_key("old", 5, 2, expires=1.0)  # expired keys are found: the caller refuses them
    assert (await store.find_key(old)).expires == 1.0  # type: ignore[union-attr]
    changes = KeyChanges(name="renamed", daily_limit=50, expires=NEVER, models=(), trusted_only=True)
    assert await store.update_key(secret[:14], changes)
    key = await store.find_key(secret)  # the store's own write empties its cache
    assert key is not None and (key.name, key.daily_limit, key.per_minute, key.expires, key.models,
                                key.trusted_only) == ("renamed", 50, 2, None, (), True)
    [listed, _] = await store.list_keys()
    assert (listed["expires"], listed["models"], listed["trusted_only"]) == (None, [], True)
    assert await store.update_key(str(key_id), KeyChanges(per_minute=9, models=("a",), expires=3e9,
                                                          trusted_only=False))
    key = await store.find_key(secret)
    assert key is not None and (key.per_minute, key.models, key.expires, key.trusted_only) == (9, ("a",), 3e9, False)
    assert await store.update_key(str(key_id), KeyChanges()) is True  # exists, nothing to change
    assert await store.update_key("andy_sk_nothere", KeyChanges(name="x")) is False
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
    assert await store.leaderboard(None, 10) == [] and await store.leaderboard(time.time() - 60, 10) == []
    await store.add_ledger([("h1", "alice", token_id, 2, 100, 0, 1.0), ("h2", "bob", None, 1, 300, 0, 1.0),
                            ("h3", "idle", None, 0, 0, 0, 1.0), ("h4", "alice", None, 1, 10, 0, 1.0)])
    await store.add_ledger([("h1", "alice", token_id, 1, 50, 0, 1.0)])
    assert await store.leaderboard(None, 10) == [{"name": "bob", "tokens": 300, "requests": 1},
                                                 {"name": "alice", "tokens": 160, "requests": 4}]
    assert await store.leaderboard(time.time() - 60, 1) == [{"name": "bob", "tokens": 300, "requests": 1}]
    assert await store.leaderboard(time.time() - 60, 10) == await store.leaderboard(None, 10)
    assert await store.leaderboard(time.time() + 7200, 10) == []
    await store.register_identity("h2", None, "s")
    await store.ban_host("h2", "junk")
    assert [r["name"] for r in await store.leaderboard(None, 10)] == ["alice"]
    assert [r["name"] for r in await store.leaderboard(time.time() - 60, 10)] == ["alice"]


async def test_models(store: Store) -> None:
    assert await store.known_models() == []
    await store.change_models(["b", "a"], [])
    models = await store.known_models()
    assert [m.name for m in models] == ["a", "b"] and all(isinstance(m, KnownModel) for m in models)
    await store.touch_models({"a": 123.0}, ["b"])
    assert await store.known_models() == [("a", 123.0)] == [KnownModel("a", 123.0)]
    await store.change_models(iter(["c"]), iter(["a"]))  # any iterables
    [model] = await store.known_models()
    assert model.name == "c" and abs(model.last_seen - time.time()) < 60


async def test_a_stores_own_writes_reach_its_cache_at_once(store: Store) -> None:
    """Without waiting for any recheck: a key this store revoked or changed is read anew."""
    secret, key_id = await store.create_key("k", 10, 10)
    assert await store.find_key(secret) is not None  # now cached
    assert await store.update_key(str(key_id), KeyChanges(daily_limit=11))
    assert (await store.find_key(secret)).daily_limit == 11  # type: ignore[union-attr]
    assert await store.revoke_key(str(key_id))
    assert await store.find_key(secret) is None
