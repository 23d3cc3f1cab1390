"""API keys, host tokens, rate limits, the ledger and hardened input, against real
coordinator and host processes (and the real `andy-host coordinator ...` CLI)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from andy_host.coordinator.access.credentials import new_secret
from andy_host.coordinator.store.sqlite import SQLiteDatabase as Store
from andy_host.coordinator.store.sqlite import SQLiteStore
from andy_host.protocol import EXIT_REFUSED
from tests.harness.procs import ROOT, Proc, Processes, get_json, until, wait_models

MODEL = "m:latest"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "andy_host.cli", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def pool(procs: Processes, env: dict[str, str] | None = None, models: str = MODEL) -> Proc:
    backend = procs.fake("ollama", "--models", models)
    coordinator = procs.coordinator(env=env)
    procs.agent(coordinator.url, "ollama", backend.url, "host-1")
    wait_models(coordinator.url, {m: 1 for m in models.split(",")})
    return coordinator


def test_anonymous_chat_limit_is_exact_and_retry_after_is_true(procs: Processes) -> None:
    coordinator = pool(procs, {"ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "10", "ANDY_HOST_COORDINATOR_RATE_WINDOW": "4"})
    url = coordinator.url + "/api/andy/v1/chat/completions"
    with httpx.Client(timeout=10) as client:
        answers = [client.post(url, json=CHAT) for _ in range(10)]
        assert [a.status_code for a in answers] == [200] * 10
        assert [int(a.headers["RateLimit-Remaining"]) for a in answers] == list(range(9, -1, -1))
        assert all(a.headers["RateLimit-Limit"] == "10" for a in answers)
        eleventh = client.post(url, json=CHAT, headers={"Authorization": "Bearer sk-not-an-andy-key"})
        assert eleventh.status_code == 429
        assert eleventh.json()["error"]["code"] == "rate_limit_exceeded"
        retry_after = int(eleventh.headers["Retry-After"])
        assert 1 <= retry_after <= 4
        assert eleventh.headers["RateLimit-Remaining"] == "0"
        assert int(eleventh.headers["RateLimit-Reset"]) == retry_after
        refused_at = time.monotonic()
        if retry_after >= 2:
            time.sleep(retry_after - 1.2)
            assert client.post(url, json=CHAT).status_code == 429  # not yet
        time.sleep(max(0.0, retry_after - (time.monotonic() - refused_at)) + 0.05)
        assert client.post(url, json=CHAT).status_code == 200  # the 12th, when Retry-After said


def test_pool_side_failures_do_not_consume_quota(procs: Processes) -> None:
    gone = procs.fake("ollama", "--models", "gone:latest")
    here = procs.fake("ollama", "--models", MODEL)
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "2"})
    leaving = procs.agent(coordinator.url, "ollama", gone.url, "leaving")
    procs.agent(coordinator.url, "ollama", here.url, "staying")
    wait_models(coordinator.url, {"gone:latest": 1, MODEL: 1})
    leaving.kill()
    wait_models(coordinator.url, {"gone:latest": 0})
    url = coordinator.url + "/v1/chat/completions"
    for _ in range(5):
        answer = httpx.post(url, json={**CHAT, "model": "gone"})
        assert answer.status_code == 503 and "No available hosts" in answer.json()["error"]["message"]
    assert [httpx.post(url, json=CHAT).status_code for _ in range(3)] == [200, 200, 429]


def test_keys_required_where_the_docs_say(procs: Processes) -> None:
    coordinator = pool(procs)
    base = coordinator.url
    for method, path in (("GET", "/api/andy/v1/models"), ("GET", "/v1/models"), ("GET", "/api/andy/pool_status"),
                         ("POST", "/api/andy/v1/embeddings"), ("POST", "/api/v1/embeddings")):
        for auth in (None, "Bearer none", "Bearer andy_sk_" + "a" * 38, "Bearer andy_sk_tooshort"):
            if path.endswith("pool_status") and auth in (None, "Bearer none"):
                continue  # its public totals need no key (below); a wrong key is still refused
            headers = {"Authorization": auth} if auth else {}
            answer = httpx.request(method, base + path, headers=headers, json={"model": MODEL, "input": "x"})
            assert answer.status_code == 401, (path, auth)
            assert answer.json()["error"]["code"] == "invalid_api_key"
    public = httpx.get(base + "/api/andy/pool_status").json()  # the totals the dashboard shows anyone
    assert public["total_hosts"] == 1 and public["active_hosts"] == 1 and public["total_models"] == 1
    assert "hosts" not in public and "stats" not in public  # the host list stays behind a key
    client = openai.OpenAI(base_url=base + "/api/andy/v1", api_key=coordinator.key)
    assert [m.id for m in client.models.list().data] == [MODEL]
    status = httpx.get(base + "/api/andy/pool_status", headers={"Authorization": f"Bearer {coordinator.key}"}).json()
    assert status["total_hosts"] == 1 and status["active_hosts"] == 1 and status["total_models"] == 1
    assert "127.0.0.1" not in json.dumps(status["hosts"])  # names, never addresses
    # chat never needs one, whatever dummy key an SDK sends
    anon = openai.OpenAI(base_url=base + "/api/andy/v1", api_key="sk-anything")
    assert anon.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}]).choices


def test_daily_limit_counts_exactly_and_survives_a_restart(procs: Processes) -> None:
    coordinator = pool(procs)
    db = procs.tmp / "coordinator.db"
    key = cli("coordinator", "keys", "create", "--name", "bot", "--db", str(db)).strip()
    assert key.startswith("andy_sk_")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=10, headers=headers) as client:
        statuses = [client.get(coordinator.url + "/v1/models").status_code for _ in range(1000)]
        assert statuses == [200] * 1000
        over = client.get(coordinator.url + "/v1/models")
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert 0 < int(over.headers["Retry-After"]) <= 86400
    port = int(coordinator.url.rsplit(":", 1)[1])
    assert coordinator.stop() == 0
    again = procs.coordinator(port=port, name="coordinator-2")
    answer = httpx.get(again.url + "/v1/models", headers=headers)
    assert answer.status_code == 429, (answer.text, dict(answer.headers), again.url, coordinator.url)
    listing = cli("coordinator", "keys", "list", "--db", str(db))
    assert key not in listing and key[:14] in listing and "1000" in listing


def test_revoked_key_and_host_token_stop_at_once(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", MODEL)
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ENROLMENT": "token"})
    db = str(procs.tmp / "coordinator.db")
    token = cli("coordinator", "tokens", "create", "--name", "alice", "--db", db).strip()
    assert token.startswith("andy_ht_")
    refused = procs.agent(coordinator.url, "ollama", backend.url, "no-token", wait=False)
    assert refused.popen is not None and refused.popen.wait(15) == EXIT_REFUSED  # fatal: no retry loop
    assert "needs a valid host token" in refused.wait_event("agent.refused")["reason"]
    assert "refused" in coordinator.wait_event("host.refused")["event"]
    agent = procs.agent(coordinator.url, "ollama", backend.url, "alice-box", "--token", token)
    wait_models(coordinator.url, {MODEL: 1})
    key = cli("coordinator", "keys", "create", "--name", "k", "--db", db).strip()
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(coordinator.url + "/v1/models", headers=headers).status_code == 200
    cli("coordinator", "keys", "revoke", key[:14], "--db", db)
    refused = httpx.get(coordinator.url + "/v1/models", headers=headers)
    assert refused.status_code == 401
    error = refused.json()["error"]  # says it was revoked, not that the key is unknown
    assert error["code"] == "key_revoked", error
    assert re.fullmatch(r"This API key was revoked on \d{4}-\d\d-\d\d \d\d:\d\d UTC; ask the pool's admin "
                        r"for a new one\.", error["message"]), error
    chat = httpx.post(coordinator.url + "/v1/chat/completions", headers=headers, json=CHAT)
    assert chat.status_code == 401 and chat.json()["error"]["code"] == "key_revoked"  # not served as anonymous
    unknown = httpx.get(coordinator.url + "/v1/models", headers={"Authorization": f"Bearer {new_secret('andy_sk_')}"})
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "invalid_api_key"
    assert "revoked" not in unknown.json()["error"]["message"]
    cli("coordinator", "tokens", "revoke", token[:14], "--db", db)
    wait_models(coordinator.url, {MODEL: 0}, timeout=5)
    assert agent.popen is not None and agent.popen.wait(10) == EXIT_REFUSED  # a revoked token ends the agent
    assert "revoked" in agent.wait_event("agent.refused")["reason"]
    assert get_json(coordinator.url + "/health")["hosts"] == 0


async def test_key_cache_follows_revocations_from_any_process(tmp_path: Path) -> None:
    """The coordinator keeps live keys in memory; a revocation written by another
    process (the keys CLI) empties that cache within key_recheck, its own at once."""
    db = str(tmp_path / "keys.db")
    now = [0.0]  # the cache's clock, moved by hand
    serving, admin = await SQLiteStore.open(db, key_recheck=5.0, clock=lambda: now[0]), Store(db)
    key, _ = admin.create_key("k", 1000, 60)
    other, _ = admin.create_key("other", 1000, 60)
    assert await serving.find_key(key) is not None and await serving.find_key(other) is not None
    assert admin.revoke_key(key[:14])
    now[0] += 5.0  # key_recheck has passed
    assert await serving.find_key(key) is None, "a key revoked elsewhere kept working past key_recheck"
    assert await serving.revoke_key(other[:14])
    assert await serving.find_key(other) is None
    assert await serving.find_key(key[:-1] + ("a" if key[-1] != "a" else "b")) is None  # checksum mismatch
    await serving.close()


def test_no_secret_in_the_database_and_no_client_identity_in_jobs(procs: Processes) -> None:
    import asyncio

    from websockets.asyncio.client import connect

    from andy_host.protocol import PROTOCOL_VERSION

    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_TRUSTED_PROXIES": "127.0.0.1"})
    db = procs.tmp / "coordinator.db"
    secrets = [cli("coordinator", "keys", "create", "--name", f"k{i}", "--db", str(db)).strip() for i in range(2)]
    secrets.append(cli("coordinator", "tokens", "create", "--name", "t", "--db", str(db)).strip())

    async def spy_host() -> str:
        ws_url = coordinator.url.replace("http://", "ws://") + "/api/andy/hosts/ws"
        hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "name": "spy", "backend": "ollama",
                 "models": [{"name": "spy:latest"}], "capacity": 1, "token": secrets[2]}
        async with connect(ws_url) as ws, httpx.AsyncClient(timeout=10) as client:
            await ws.send(json.dumps(hello))
            await ws.recv()  # welcome
            request = asyncio.create_task(client.post(
                coordinator.url + "/v1/chat/completions",
                json={"model": "spy", "messages": [{"role": "user", "content": "x"}], "user": "player-1"},
                headers={"Authorization": f"Bearer {secrets[0]}", "X-Forwarded-For": "203.0.113.9"},
            ))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "job":
                    break
            await ws.send(json.dumps({"type": "done", "id": frame["id"], "usage": {}}))
            assert (await request).status_code == 200
            return json.dumps(frame)

    job = asyncio.run(spy_host())
    for needle in (secrets[0], "andy_sk_", "203.0.113.9", "127.0.0.1", "player-1", "Authorization"):
        assert needle not in job
    coordinator.stop()
    dump = "\n".join(sqlite3.connect(db).iterdump())
    raw = b"".join(p.read_bytes() for p in Path(db).parent.glob("coordinator.db*"))
    for secret in secrets:
        assert secret not in dump and secret.encode() not in raw
        assert secret[:14] in dump  # the display prefix is kept, for listings


def test_forwarded_for_is_believed_only_from_trusted_proxies(procs: Processes) -> None:
    env = {"ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "1"}
    trusting = pool(procs, {**env, "ANDY_HOST_COORDINATOR_TRUSTED_PROXIES": "127.0.0.0/8"})
    url = trusting.url + "/v1/chat/completions"
    for ip in ("198.51.100.1", "198.51.100.2"):
        assert httpx.post(url, json=CHAT, headers={"X-Forwarded-For": ip}).status_code == 200
    assert httpx.post(url, json=CHAT, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 429
    other = procs.coordinator(env=env, name="untrusting", db=procs.tmp / "other.db")
    procs.agent(other.url, "ollama", procs.fake("ollama", "--models", MODEL).url, "host-2")
    wait_models(other.url, {MODEL: 1})
    url = other.url + "/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert httpx.post(url, json=CHAT, headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 429


def test_ledger_and_contributor_credit(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", MODEL)
    coordinator = procs.coordinator(env={
        "ANDY_HOST_COORDINATOR_CREDIT_TOKENS": "20", "ANDY_HOST_COORDINATOR_CREDIT_DAILY": "5",
    })
    db = str(procs.tmp / "coordinator.db")
    token = cli("coordinator", "tokens", "create", "--name", "alice", "--db", db).strip()
    key = cli("coordinator", "keys", "create", "--name", "alice-bot", "--daily-limit", "1",
              "--host-token", token[:14], "--db", db).strip()
    procs.agent(coordinator.url, "ollama", backend.url, "alice-box", "--token", token)
    wait_models(coordinator.url, {MODEL: 1})
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(coordinator.url + "/v1/models", headers=headers).status_code == 200
    assert httpx.get(coordinator.url + "/v1/models", headers=headers).status_code == 429
    for i in range(6):  # anonymous traffic served by alice's host: "ollama heard: a b i", 5 tokens each
        assert httpx.post(coordinator.url + "/v1/chat/completions",
                          json={**CHAT, "messages": [{"role": "user", "content": f"a b {i}"}]}).status_code == 200
    until(lambda: httpx.get(coordinator.url + "/v1/models", headers=headers).status_code == 200, within=15,
          what="alice's key credited for what her host served (at the ledger's next flush)")
    hosts = cli("coordinator", "hosts", "--db", db)
    assert "alice-box" in hosts and token[:14] in hosts
    ledger = Store(db).ledger()
    assert ledger[0]["requests"] == 6 and ledger[0]["tokens"] == 30


def test_admin_http_api(procs: Processes) -> None:
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": "s3cret-admin"})
    base = coordinator.url + "/api/andy/admin"
    assert httpx.get(base + "/keys").status_code == 401
    admin = {"Authorization": "Bearer s3cret-admin"}
    created = httpx.post(base + "/keys", json={"name": "web", "daily_limit": 5}, headers=admin)
    assert created.status_code == 201
    key = created.json()["key"]
    listed = httpx.get(base + "/keys", headers=admin).json()["keys"]
    assert any(k["name"] == "web" and k["daily_limit"] == 5 for k in listed) and key not in json.dumps(listed)
    assert httpx.get(coordinator.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.delete(f"{base}/keys/{key[:14]}", headers=admin).status_code == 200
    assert httpx.get(coordinator.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert httpx.post(base + "/tokens", json={}, headers=admin).status_code == 400


@pytest.mark.parametrize(
    "body, param",
    [
        (b"\xff\xfe not utf-8", None),
        (json.dumps({**CHAT, "max_tokens": -5}).encode(), "max_tokens"),
        (json.dumps({**CHAT, "temperature": 1e308}).encode(), "temperature"),
        (json.dumps({**CHAT, "messages": [{"role": "user", "content": "x"}] * 3000}).encode(), "messages"),
        (json.dumps({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}).encode(), "messages[0].role"),
        (json.dumps({**CHAT, "messages": [{"role": "user", "content": 5}]}).encode(), "messages[0].content"),
        (json.dumps({**CHAT, "stop": [1, 2]}).encode(), "stop"),
        (json.dumps({**CHAT, "model": 7}).encode(), "model"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), "stream"),
        (b"[1, 2, 3]", None),
    ],
    ids=["utf8", "neg-max-tokens", "huge-temperature", "too-many-messages", "role", "content-type", "stop",
         "model-type", "stream-type", "not-object"],
)
def test_hardened_input_gets_a_400_naming_the_field(procs: Processes, body: bytes, param: str | None) -> None:
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_MAX_CONTENT_CHARS": "1000"})
    answer = httpx.post(coordinator.url + "/v1/chat/completions", content=body,
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    long = httpx.post(coordinator.url + "/v1/chat/completions",
                      json={**CHAT, "messages": [{"role": "user", "content": "x" * 1001}]})
    assert long.status_code == 400 and long.json()["error"]["param"] == "messages[0].content"


def test_openapi_document_describes_every_route(procs: Processes) -> None:
    from andy_host.config import CoordinatorConfig
    from andy_host.coordinator.runtime.app import build_app

    app = build_app(CoordinatorConfig())
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        info: dict[str, Any] = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        # the hosts' websocket and the replicas' internal route are not for clients
        if route.method != "HEAD" and path and path != "/api/andy/hosts/ws" and "/internal/" not in path:
            routes.add((route.method.lower(), path))
    coordinator = procs.coordinator()
    spec = get_json(coordinator.url + "/openapi.json")
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == documented


def test_open_enrolment_caps_hosts_per_address(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", MODEL)
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_MAX_HOSTS_PER_ADDRESS": "1"})
    first = procs.agent(coordinator.url, "ollama", backend.url, "first")
    wait_models(coordinator.url, {MODEL: 1})
    second = procs.agent(coordinator.url, "ollama", backend.url, "second", wait=False)
    second.wait_disconnected()  # refused: its link went down (its own word)
    refused = coordinator.wait_event("host.refused")
    assert refused["name"] == "second" and "at most 1 hosts per address" in refused["reason"]
    assert get_json(coordinator.url + "/health")["hosts"] == 1
    first.signal(__import__("signal").SIGINT)  # its place frees up: the second gets in on a retry
    second.wait_connected()
    wait_models(coordinator.url, {MODEL: 1})
