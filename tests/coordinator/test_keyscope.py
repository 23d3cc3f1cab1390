"""Key expiry and model scope as pure decisions (keyscope.py), and the database
migration that adds them to an existing file."""

from __future__ import annotations

import calendar
import sqlite3
import time
from pathlib import Path

import pytest

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.access.keyscope import NEVER, ScopeError, allows, expired, parse_expires, parse_models
from andy_host.coordinator.store.interface import KeyChanges
from andy_host.coordinator.store.sqlite import MIGRATIONS, SQLiteDatabase

NOW = 1_750_000_000.0


def test_expiry_from_durations_dates_and_never() -> None:
    assert parse_expires("30d", NOW) == NOW + 30 * 86400
    assert parse_expires("12h", NOW) == NOW + 12 * 3600
    assert parse_expires("90m", NOW) == NOW + 90 * 60
    midnight = calendar.timegm((2099, 1, 31, 0, 0, 0))  # a date without a zone is UTC
    assert parse_expires("2099-01-31", NOW) == midnight
    assert parse_expires("2099-01-31T12:00:00+02:00", NOW) == midnight + 10 * 3600
    assert parse_expires("never", NOW) == NEVER
    for bad in ("soon", "30 days", "2020-01-01", "-5d", "1y"):
        with pytest.raises(ScopeError):
            parse_expires(bad, NOW)
    assert expired(NOW - 1, NOW) and not expired(NOW + 1, NOW)
    assert not expired(None, NOW) and not expired(NEVER, NOW)


def test_model_patterns_match_as_share_models_do() -> None:
    scope = parse_models("llama3*, andy-4*,sweaterdog/*")
    assert scope == ("llama3*", "andy-4*", "sweaterdog/*")
    assert allows(scope, "llama3.2:latest") and allows(scope, "llama3:70b")
    assert allows(scope, "sweaterdog/andy-4:latest") and allows(scope, "sweaterdog/other:7b")
    assert not allows(scope, "qwen2.5:latest") and not allows(scope, "evil/llama-copy:latest")
    assert allows((), "anything:latest")  # no scope: every model
    assert parse_models("*") == () and parse_models(["m", "m"]) == ("m",)
    assert allows(parse_models("m"), "m:latest") and not allows(parse_models("m"), "m:7b")
    for bad in ("a b", "x;drop", "m" * 201, "", " , ", []):  # nothing given is not "every model"
        with pytest.raises(ScopeError):
            parse_models(bad)


def test_migration_adds_expiry_and_models_to_an_existing_database(tmp_path: Path) -> None:
    """A database written before keys could expire keeps its keys, which stay unbounded."""
    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, statements in enumerate(MIGRATIONS[:4], start=1):
        for statement in statements:
            old.execute(statement)
        old.execute("INSERT INTO schema_version VALUES (?)", (version,))
    secret = sec.new_secret(sec.API_KEY_PREFIX)
    old.execute("INSERT INTO api_keys (display, name, hash, created, daily_limit, per_minute)"
                " VALUES (?, 'old', ?, ?, 5, 6)", (secret[: sec.DISPLAY_LEN], sec.digest(secret), time.time()))
    old.close()
    db = SQLiteDatabase(path)
    assert db.schema_version() == len(MIGRATIONS)
    key = db.find_key(sec.digest(secret))
    assert key is not None and key.expires is None and key.models == () and key.daily_limit == 5
    assert db.update_key(secret[: sec.DISPLAY_LEN], KeyChanges(expires=NOW + 1e9, models=("m*",), per_minute=9))
    key = db.find_key(sec.digest(secret))
    assert key is not None and key.expires == NOW + 1e9 and key.models == ("m*",) and key.per_minute == 9
    assert db.update_key(str(key.id), KeyChanges(expires=NEVER, models=()))
    key = db.find_key(sec.digest(secret))
    assert key is not None and key.expires is None and key.models == ()
    assert not db.update_key("andy_sk_nothing", KeyChanges(name="x"))
    db.close()
