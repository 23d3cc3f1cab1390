"""The admin's lifecycle, as an admin sees it: the `andy-host coordinator ...` CLI as a
subprocess and the admin HTTP API against real coordinator and host processes; the
clients are the official `openai` and `ollama` packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.harness.procs import ROOT, Proc, Processes, until, wait_models

MODELS = "m:latest,other:latest"
ADMIN = "s3cret-admin"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "andy_host.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def pool(procs: Processes, env: dict[str, str] | None = None) -> Proc:
    backend = procs.fake("ollama", "--models", MODELS)
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ADMIN, **(env or {})})
    procs.agent(coordinator.url, "ollama", backend.url, "host-1")
    wait_models(coordinator.url, {"m:latest": 1, "other:latest": 1})
    return coordinator


def applied(check: Callable[[], bool], what: str) -> None:
    """Poll ``check()`` until a change made through the database shows on the running
    coordinator (it re-reads keys on a timer); the bound is for a loaded machine."""
    until(check, within=15, what=what, every=0.02)


def test_cli_conventions_without_a_coordinator(tmp_path: Path) -> None:
    """Typos are one-line errors with exit code 2, lists are JSON on request, no None."""
    db = str(tmp_path / "pool.db")
    for args in (["keys", "list"], ["tokens", "list"], ["hosts"], ["keys", "create", "--name", "x"]):
        missing = run("coordinator", *args, "--db", db)
        assert missing.returncode == 2, missing
        assert missing.stderr.strip().count("\n") == 0 and "no database file" in missing.stderr
        # it suggests --create only to the commands that take it (keys list --create: "No such option")
        words = [a for a in args if a not in ("--name", "x")]
        assert ("pass --create" in missing.stderr) == ("create" in words), missing.stderr
        shown = " ".join(run("coordinator", *words, "-h").stdout.split())
        assert ("unless --create" in shown) == ("create" in words)
    assert not Path(db).exists()  # a typo no longer makes an empty database
    key = ok("coordinator", "keys", "create", "--name", "bot", "--db", db, "--create").strip()
    assert key.startswith("andy_sk_")
    ok("coordinator", "keys", "create", "--name", "scoped", "--db", db, "--expires", "30d", "--models", "m*,x/*")
    table = ok("coordinator", "keys", "list", "--db", db)
    assert "None" not in table and "never" in table and "m*,x/*" in table
    rows = json.loads(ok("coordinator", "keys", "list", "--db", db, "--json"))
    assert [r["name"] for r in rows] == ["bot", "scoped"] and rows[1]["models"] == ["m*", "x/*"]
    assert rows[0]["expires"] is None and 29 * 86400 < rows[1]["expires"] - time.time() <= 30 * 86400
    assert json.loads(ok("coordinator", "tokens", "list", "--db", db, "--json")) == []
    assert json.loads(ok("coordinator", "hosts", "--db", db, "--json")) == []
    for args in (["keys", "revoke", "andy_sk_nope"], ["keys", "update", "999", "--name", "x"],
                 ["tokens", "revoke", "andy_ht_nope"], ["hosts", "kick", "nohost"], ["hosts", "ban", "nohost"],
                 ["keys", "update", key[:14]], ["keys", "update", key[:14], "--expires", "soon"],
                 ["keys", "create", "--name", "y", "--models", "a b"]):
        refused = run("coordinator", *args, "--db", db)
        assert refused.returncode == 2 and refused.stderr.startswith("andy-host: "), (args, refused)
        assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr
    helped = ok("coordinator", "keys", "create", "--help")
    assert "default: coordinator.db" not in helped


def test_key_update_expiry_and_models_reach_a_running_coordinator(procs: Processes) -> None:
    coordinator = pool(procs)
    db = str(procs.tmp / "coordinator.db")
    key = ok("coordinator", "keys", "create", "--name", "bot", "--db", db, "--models", "m*").strip()
    prefix = key[:14]
    client = openai.OpenAI(base_url=coordinator.url + "/api/andy/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["m:latest"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    error = denied.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_allowed" and "other:latest" in error["message"]
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
    local = ollama.Client(host=coordinator.url, headers={"Authorization": f"Bearer {key}"})
    assert [m.model for m in local.list().models] == ["m:latest"]
    with pytest.raises(ollama.ResponseError) as refused:
        local.chat(model="other", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 403 and "other:latest" in refused.value.error

    ok("coordinator", "keys", "update", prefix, "--models", "*", "--daily-limit", "77", "--db", db)
    applied(lambda: len(client.models.list().data) == 2, "the wider scope")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(coordinator.url + "/v1/models", headers=headers).headers["RateLimit-Limit"] == "77"

    ok("coordinator", "keys", "update", prefix, "--expires", "1s", "--db", db)
    applied(lambda: httpx.get(coordinator.url + "/v1/models", headers=headers).status_code == 401, "the expiry")
    with pytest.raises(openai.AuthenticationError) as gone:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "expired" in str(gone.value)
    assert json.loads(ok("coordinator", "keys", "list", "--json", "--db", db))[1]["status"] == "expired"
    ok("coordinator", "keys", "update", prefix, "--expires", "never", "--db", db)
    applied(lambda: httpx.get(coordinator.url + "/v1/models", headers=headers).status_code == 200, "no expiry")


def _host_id(base: str, name: str) -> str:
    hosts = httpx.get(base + "/api/andy/admin/hosts", headers={"Authorization": f"Bearer {ADMIN}"}).json()["hosts"]
    return next(h["host_id"] for h in hosts if h["name"] == name and h["connected"])


def test_kick_ends_the_connection_and_refuses_the_host_for_a_while(procs: Processes) -> None:
    """An open-enrolment host kicked from the CLI is gone within a second, refused for
    kick_seconds, then back by itself; the other host stays."""
    backend = procs.fake("ollama", "--models", "m:latest")
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ADMIN,
                                         "ANDY_HOST_COORDINATOR_KICK_SECONDS": "3"})
    kicked = procs.agent(coordinator.url, "ollama", backend.url, "kicked")
    procs.agent(coordinator.url, "ollama", backend.url, "stays")
    wait_models(coordinator.url, {"m:latest": 2})
    host_id = _host_id(coordinator.url, "kicked")
    assert ok("coordinator", "hosts", "kick", host_id, "--db", str(procs.tmp / "coordinator.db")).strip() \
        == f"kicked {host_id}"
    wait_models(coordinator.url, {"m:latest": 1}, timeout=10)
    kicked.wait_disconnected(timeout=10)
    refusal = next(e for e in kicked.events() if e.get("event") == "link.down")
    assert "kicked" in json.dumps(refusal)
    wait_models(coordinator.url, {"m:latest": 2}, timeout=15)
    assert kicked.popen is not None and kicked.popen.poll() is None  # a kick is not fatal: it retried
    assert _host_id(coordinator.url, "kicked") == host_id
    downs = [e for e in kicked.events() if e.get("event") == "link.down"]
    assert len(downs) == 1 and downs[0]["retry_in"] >= 2.5  # it waited the kick out instead of knocking
    assert kicked.links() == ["up", "down", "up"]  # one outage: kicked, then back once the kick ran out


def test_admin_http_api_lifecycle_and_coordinator_status(procs: Processes) -> None:
    coordinator = pool(procs, {"ANDY_HOST_COORDINATOR_ENROLMENT": "open"})
    base = coordinator.url + "/api/andy/admin"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(headers=admin, timeout=10) as api:
        created = api.post(base + "/keys", json={"name": "web", "models": ["other*"], "expires": "7d"})
        assert created.status_code == 201, created.text
        key, key_id = created.json()["key"], created.json()["id"]
        keyed = openai.OpenAI(base_url=coordinator.url + "/v1", api_key=key, max_retries=0)
        assert [m.id for m in keyed.models.list().data] == ["other:latest"]
        assert api.patch(f"{base}/keys/{key_id}", json={"expires": "soon"}).json()["error"]["param"] == "expires"
        assert api.patch(f"{base}/keys/{key_id}", json={"colour": "red"}).status_code == 400
        assert api.patch(f"{base}/keys/nope", json={"name": "x"}).status_code == 404
        updated = api.patch(f"{base}/keys/{key_id}", json={"models": None, "per_minute": 5, "expires": None})
        assert updated.status_code == 200, updated.text
        assert updated.json()["key"]["models"] == [] and updated.json()["key"]["expires"] is None
        assert len(keyed.models.list().data) == 2  # the API's own write applies at once
        keyed.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        listed = {k["id"]: k for k in api.get(base + "/keys").json()["keys"]}
        assert listed[key_id]["status"] == "active"  # as `keys list --json` shows it
        made = api.post(base + "/tokens", json={"name": "mine", "trusted": True})
        assert made.status_code == 201, made.text
        tokens = api.get(base + "/tokens").json()["tokens"]
        assert [(t["trusted"], t["status"]) for t in tokens] == [(True, "active")]  # a boolean, not 1

        status = api.get(base + "/status").json()
        assert status["totals"]["hosts"] == 1 and status["hosts"]["active"] == 1
        # every status docs/admin.md lists is there, 0 included (as andy_hosts{status} on /metrics)
        assert status["hosts"] == {"active": 1, "busy": 0, "idle": 0, "paused": 0, "draining": 0,
                                   "backend_down": 0, "quarantined": 0}
        assert {m["name"]: m["serving_hosts"] for m in status["models"]} == {"m:latest": 1, "other:latest": 1}
        assert status["rates"]["requests_per_s"] >= 0 and "tokens_per_s" in status["rates"]
        assert httpx.get(base + "/status").status_code == 401

        host_id = _host_id(coordinator.url, "host-1")
        assert api.post(f"{base}/hosts/nohost/kick").status_code == 404
        assert api.post(f"{base}/hosts/{host_id}/kick", json={"seconds": -1}).status_code == 400
        kicked = api.post(f"{base}/hosts/{host_id}/kick", json={"seconds": 30})
        assert kicked.json() == {"kicked": host_id, "seconds": 30, "was_connected": True}
        assert api.get(base + "/status").json()["totals"]["hosts"] == 0  # applied before the answer

    env = {"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ADMIN}
    deadline = time.monotonic() + 10
    while True:  # the rates need two of the once-a-second samples: a fresh coordinator may have one
        shown = run("coordinator", "status", "--url", coordinator.url, "--json", env=env)
        assert shown.returncode == 0, shown.stderr
        live = json.loads(shown.stdout)
        if live["rates"]["window_seconds"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert live["totals"]["hosts"] == 0 and live["rates"]["window_seconds"] > 0
    text = run("coordinator", "status", "--url", coordinator.url, "--admin-token", ADMIN)
    assert text.returncode == 0 and "hosts: 0 connected" in text.stdout and "requests/s" in text.stdout
    wrong = run("coordinator", "status", "--url", coordinator.url, "--admin-token", "nope")
    assert wrong.returncode == 1 and "401" in wrong.stderr and wrong.stderr.count("\n") == 1
    down = run("coordinator", "status", "--url", "http://127.0.0.1:9", "--admin-token", ADMIN)
    assert down.returncode == 1 and "is the coordinator running" in down.stderr


def test_kicking_a_token_host_leaves_the_tokens_other_hosts(procs: Processes) -> None:
    """On a shared host token a kick refuses that host id only (a ban is for the token):
    another host joins on the same token while the kicked one is still refused."""
    backend = procs.fake("ollama", "--models", "m:latest")
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ADMIN,
                                         "ANDY_HOST_COORDINATOR_ENROLMENT": "token"})
    token = ok("coordinator", "tokens", "create", "--name", "alice", "--db", str(procs.tmp / "coordinator.db")).strip()
    box_a = procs.agent(coordinator.url, "ollama", backend.url, "box-a", "--token", token)
    wait_models(coordinator.url, {"m:latest": 1})
    kicked = httpx.post(f"{coordinator.url}/api/andy/admin/hosts/{_host_id(coordinator.url, 'box-a')}/kick",
                        json={"seconds": 4}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert kicked.status_code == 200 and kicked.json()["was_connected"]
    procs.agent(coordinator.url, "ollama", backend.url, "box-b", "--token", token)  # waits for its link
    hosts = httpx.get(coordinator.url + "/api/andy/admin/hosts", headers={"Authorization": f"Bearer {ADMIN}"})
    assert {h["name"] for h in hosts.json()["hosts"] if h["connected"]} == {"box-b"}
    wait_models(coordinator.url, {"m:latest": 2}, timeout=15)  # then box-a is back, on its own
    downs = [e for e in box_a.events() if e.get("event") == "link.down"]
    assert len(downs) == 1 and downs[0]["retry_in"] >= 3  # after it waited out the 4 s kick, not by knocking
