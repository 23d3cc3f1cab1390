"""The admin API and CLI against a careless admin: every bad input is a 400 in OpenAI's
error shape (never a 500, never a stored value that breaks a later listing), and a key
prefix that two keys share reaches neither. A coordinator, a host and its backend run
in-process; the CLI runs as a subprocess on the coordinator's database file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.admin.moderation import MAX_KICK_SECONDS, MODERATION
from andy_host.coordinator.store.interface import STORE
from tests.harness.inproc import agent, coordinator, fake
from tests.harness.procs import ROOT

ADMIN = "adm1n"
NOW_MS = time.time() * 1000  # a JavaScript Date.now(): milliseconds, not seconds

BAD_BODIES: list[tuple[str, str, Any]] = [
    ("POST", "/keys", {"name": "x", "expires": NOW_MS}),
    ("POST", "/keys", {"name": "x", "expires": NOW_MS * 1e6}),  # nanoseconds
    ("POST", "/keys", {"name": "x", "expires": 5}),  # 1970: in the past, as "2020-01-01" is
    ("POST", "/keys", {"name": "x", "expires": -1}),
    ("POST", "/keys", {"name": "x", "expires": 10**400}),
    ("POST", "/keys", {"name": "x", "expires": "9999999w"}),
    ("POST", "/keys", {"name": "x", "models": [f"m{i}" for i in range(5000)]}),
    ("POST", "/keys", {"name": "x", "models": [["nested"]]}),
    ("POST", "/keys", {"name": "x", "models": ["ünïcode"]}),
    ("POST", "/keys", {"name": "x", "daily_limit": -5}),
    ("POST", "/keys", {"name": "x", "per_minute": 2**64}),
    ("POST", "/keys", {"name": "x", "host_token": "andy_ht_nothing"}),
    ("PATCH", "/keys/1", {"expires": NOW_MS}),
    ("PATCH", "/keys/1", {"per_minute": 0}),
    ("PATCH", "/keys/1", {"name": {"a": 1}}),
    ("POST", "/hosts/{host}/kick", {"seconds": 366 * 86400 + 1}),
    ("POST", "/hosts/{host}/kick", {"seconds": "60"}),
    ("POST", "/hosts/{host}/check", {"count": 10**6}),
]
BAD_RAW = {  # what Python's json.dumps writes for float("nan"), float("inf"); numbers beyond a double
    b'{"name": "x", "expires": NaN}': "NaN or Infinity", b'{"name": "x", "expires": Infinity}': "NaN or Infinity",
    b'{"name": "x", "expires": 1e400}': "out of range", b'{"name": "x", "expires": 1' + b"0" * 400 + b"}": "out of range",
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "andy_host.cli", "coordinator", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, env={**os.environ, "ANDY_HOST_LOG_FORMAT": "json"})


def openai_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return dict(error)


async def test_bad_admin_input_is_a_400_and_nothing_stored_breaks_a_listing(tmp_path: Path) -> None:
    async with coordinator(tmp_path, admin_token=ADMIN) as pool, fake("ollama") as url, \
            agent(pool, "ollama", url, "h1"):
        host = next(iter(pool.registry.hosts))
        async with httpx.AsyncClient(base_url=pool.url + "/api/andy/admin", timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN}"}) as api:
            for method, path, body in BAD_BODIES:
                answer = await api.request(method, path.format(host=host), content=json.dumps(body))
                assert answer.status_code == 400, (method, path, str(body)[:80], answer.text[:300])
                openai_error(answer)
            for raw, why in BAD_RAW.items():
                answer = await api.post("/keys", content=raw)
                assert answer.status_code == 400 and why in openai_error(answer)["message"], answer.text
            for reason in ("inf", "nan", "1e12"):  # a kick an older CLI or psql wrote: a bounded kick
                await pool.app[STORE].add_event("kick", host, reason)
                await pool.app[MODERATION].poll()
                assert max(pool.app[MODERATION].kicks.until.values()) <= time.monotonic() + MAX_KICK_SECONDS
            shown = (await api.post("/keys", json={"name": "x", "expires": NOW_MS})).json()["error"]["message"]
            assert "milliseconds" in shown and "9999" in shown
            later = time.time() + 3600
            ok = await api.post("/keys", json={"name": "fine", "expires": later})
            assert ok.status_code == 201, ok.text
            keys = (await api.get("/keys")).json()["keys"]
            assert [k["expires"] for k in keys] == [None, later]  # the tests' key, then this one
    listed = cli("keys", "list", "--db", str(tmp_path / "coordinator.db"))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr


def test_a_stored_expiry_beyond_the_year_9999_is_listed_not_a_traceback(tmp_path: Path) -> None:
    """A database written before expiries were bounded (an admin's milliseconds) still lists."""
    db = str(tmp_path / "pool.db")
    key = cli("keys", "create", "--name", "old", "--db", db, "--create").stdout.strip()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE api_keys SET expires = 1.7e18 WHERE display = ?", (key[: sec.DISPLAY_LEN],))
    listed = cli("keys", "list", "--db", db)
    assert listed.returncode == 0 and "after 9999" in listed.stdout, listed.stderr
    assert json.loads(cli("keys", "list", "--db", db, "--json").stdout)[0]["status"] == "active"
    too_far = cli("keys", "update", key[: sec.DISPLAY_LEN], "--expires", "9999999w", "--db", db)
    assert too_far.returncode == 2 and "9999" in too_far.stderr and too_far.stderr.count("\n") == 1
    kick = cli("hosts", "kick", "h", "--seconds", "1e12", "--db", db)
    assert kick.returncode == 2 and "--seconds" in kick.stderr and "Traceback" not in kick.stderr


async def test_a_prefix_two_keys_share_reaches_neither(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefixes hold 30 random bits: in a pool of 10,000 keys two share one about 5 % of
    the time. PATCH or DELETE by that prefix must not raise or revoke both."""
    real = sec.new_secret

    def colliding(prefix: str) -> str:
        body = "same22" + real(prefix)[len(prefix) + 6: len(prefix) + 32]
        return f"{prefix}{body}{sec._checksum(body)}"

    async with coordinator(tmp_path, admin_token=ADMIN) as pool:
        async with httpx.AsyncClient(base_url=pool.url + "/api/andy/admin", timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN}"}) as api:
            monkeypatch.setattr(sec, "new_secret", colliding)
            made = [(await api.post("/keys", json={"name": n, "daily_limit": 5})).json() for n in ("alice", "bob")]
            monkeypatch.undo()
            prefix = made[0]["key"][: sec.DISPLAY_LEN]
            assert made[1]["key"].startswith(prefix)
            for answer in (await api.patch(f"/keys/{prefix}", json={"daily_limit": 10**6}),
                           await api.delete(f"/keys/{prefix}")):
                assert answer.status_code == 400 and openai_error(answer)["code"] == "ambiguous_prefix", answer.text
                assert str(made[0]["id"]) in answer.json()["error"]["message"]
            keys = (await api.get("/keys")).json()["keys"]
            assert [(k["daily_limit"], k["revoked"]) for k in keys[1:]] == [(5, None), (5, None)]
            assert (await api.delete(f"/keys/{made[0]['id']}")).status_code == 200
    revoke = cli("keys", "revoke", prefix, "--db", str(tmp_path / "coordinator.db"))
    assert revoke.returncode == 0, revoke.stderr  # now one live key has the prefix
