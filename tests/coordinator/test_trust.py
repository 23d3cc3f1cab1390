"""Hosts earn trust: a pool of real processes with a trusted host, an honest stranger
and a cheat. The cheat is found and quarantined by answer checks; claims are measured;
errors are evidence; admins release, ban, and keep private traffic on trusted hosts."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from andy_host.coordinator.store.sqlite import SQLiteDatabase as Store
from tests.harness.procs import Proc, Processes, until, wait_models
from tests.harness.sse import chat_stream

MODEL = "m:latest"
ADMIN = {"Authorization": "Bearer admin-secret"}
ENV = {"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": "admin-secret", "ANDY_HOST_COORDINATOR_EJECT_AFTER": "1000"}


def expected(content: str) -> str:
    return f"pool heard: {content}"


def fault(url: str, mode: str | None, count: int = -1, **extra: Any) -> None:
    httpx.post(url + "/_fault", json={"mode": mode, "count": count, **extra}).raise_for_status()


def hosts(coordinator: Proc) -> dict[str, dict[str, Any]]:
    status = httpx.get(coordinator.url + "/api/andy/pool_status",
                       headers={"Authorization": f"Bearer {coordinator.key}"}).json()
    return {h["name"]: h for h in status["hosts"]}


def trusted_token(procs: Processes) -> str:
    store = Store(str(procs.tmp / "coordinator.db"))
    token, _ = store.create_token("admin's machines", trusted=True)
    store.close()
    return token


def pool(procs: Processes, cheat: str | None, delay: str = "0.002") -> dict[str, Any]:
    """A trusted host, an honest stranger and (unless ``cheat`` is None) a cheating stranger."""
    coordinator = procs.coordinator(env=ENV)
    token = trusted_token(procs)
    fakes = {name: procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", delay,
                              name=f"fake-{name}")
             for name in ("trusted", "stranger", *(["cheat"] if cheat else []))}
    procs.agent(coordinator.url, "llamacpp", fakes["trusted"].url, "trusted", "--token", token)
    procs.agent(coordinator.url, "llamacpp", fakes["stranger"].url, "stranger")
    if cheat:
        fault(fakes["cheat"].url, cheat)
        procs.agent(coordinator.url, "llamacpp", fakes["cheat"].url, "cheat")
    wait_models(coordinator.url, {MODEL: len(fakes)})
    return {"coordinator": coordinator, "fakes": fakes, "token": token}


def host_id(coordinator: Proc, name: str) -> str:
    """A host's id, from the admin API (pool_status shows no ids)."""
    listing = httpx.get(coordinator.url + "/api/andy/admin/hosts", headers=ADMIN).json()["hosts"]
    return str(next(h["host_id"] for h in listing if h["name"] == name and h["connected"]))


def backend_requests(url: str) -> int:
    return int(httpx.get(url + "/_stats").json()["requests"])


def test_a_junk_host_is_quarantined_quickly_and_clients_see_little_junk(procs: Processes) -> None:
    p = pool(procs, "junk")
    coordinator, fakes = p["coordinator"], p["fakes"]
    quarantined_at: dict[str, int] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if hosts(coordinator)["cheat"]["quarantined"]:
                quarantined_at["jobs"] = backend_requests(fakes["cheat"].url) - 1  # less its start-up probe
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def ask(i: int) -> bool:
        content = f"question {i} about foxes and owls"
        if i % 2:
            result = chat_stream(coordinator.url, MODEL, content)
            assert result.outcome == "complete", result
            return result.text == expected(content)
        reply = httpx.post(coordinator.url + "/v1/chat/completions", timeout=30,
                           json={"model": MODEL, "messages": [{"role": "user", "content": content}]})
        assert reply.status_code == 200, reply.text
        return bool(reply.json()["choices"][0]["message"]["content"] == expected(content))

    try:
        with ThreadPoolExecutor(4) as ex:
            right = list(ex.map(ask, range(200)))
    finally:
        stop.set()
        watcher.join()
    junk = right.count(False)
    view = hosts(coordinator)
    stats = httpx.get(coordinator.url + "/health").json()["stats"]
    client_jobs = 200
    print(f"\njunk host: quarantined after {quarantined_at.get('jobs')} of its jobs; clients saw {junk}/200 junk "
          f"answers; checks {stats['checks']} ({stats['checks_failed']} failed), {stats['check_jobs']} backend "
          f"jobs for checks over {client_jobs} client jobs ({stats['check_jobs'] / client_jobs:.1%})")
    assert view["cheat"]["quarantined"] and view["cheat"]["status"] == "quarantined"
    assert quarantined_at["jobs"] <= 50
    assert junk <= 20  # at most 10% of what clients got
    assert view["stranger"]["quarantined"] is None and view["stranger"]["served"] > 20  # the honest stranger serves
    # the dashboard says "quarantined" and nothing more
    public = {h["name"]: h for h in httpx.get(coordinator.url + "/api/andy/dashboard").json()["hosts"]}
    assert public["cheat"]["status"] == "quarantined" and "quarantined" not in str(public["cheat"]["pause"])
    # the admin sees why, and can release it
    listing = httpx.get(coordinator.url + "/api/andy/admin/hosts", headers=ADMIN).json()["hosts"]
    cheat = next(h for h in listing if h["name"] == "cheat")
    assert "failed answer checks" in cheat["quarantined"]
    assert httpx.post(coordinator.url + f"/api/andy/admin/hosts/{cheat['host_id']}/release",
                      headers=ADMIN).status_code == 200
    assert hosts(coordinator)["cheat"]["quarantined"] is None


def test_a_quarantined_host_that_mends_is_released_by_checks(procs: Processes) -> None:
    p = pool(procs, "junk")
    coordinator, fakes = p["coordinator"], p["fakes"]
    deadline = time.monotonic() + 20
    while not hosts(coordinator)["cheat"]["quarantined"]:
        chat_stream(coordinator.url, MODEL, "anyone there")
        assert time.monotonic() < deadline
    fault(fakes["cheat"].url, None, count=0)  # it answers honestly from now on
    cheat_id = host_id(coordinator, "cheat")
    verdict = httpx.post(coordinator.url + f"/api/andy/admin/hosts/{cheat_id}/check", json={"count": 3},
                         headers=ADMIN, timeout=60).json()
    assert verdict["passed"] == 3 and verdict["quarantined"] is None


def test_inflated_token_counts_add_nothing_beyond_what_was_relayed(procs: Processes) -> None:
    coordinator = procs.coordinator(env=ENV)
    store = Store(str(procs.tmp / "coordinator.db"))
    token, _ = store.create_token("inflater")
    key, _ = store.create_key("owner", daily_limit=100, per_minute=60, host_token=token[:14])
    store.close()
    fake = procs.fake("llamacpp", "--model", MODEL, "--label", "pool")
    procs.agent(coordinator.url, "llamacpp", fake.url, "inflater", "--token", token)
    wait_models(coordinator.url, {MODEL: 1})
    fault(fake.url, "inflate")
    for i in range(5):
        content = f"count me {i}"
        reply = httpx.post(coordinator.url + "/v1/chat/completions", timeout=30,
                           json={"model": MODEL, "messages": [{"role": "user", "content": content}]}).json()
        assert reply["choices"][0]["message"]["content"] == expected(content)
        assert reply["usage"]["completion_tokens"] < 20  # what the text supports, not 2**31-1
    view = hosts(coordinator)["inflater"]
    assert view["tokens"] < 100 and view["strikes"] >= 5
    metrics = httpx.get(coordinator.url + "/metrics").text
    generated = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("andy_completion_tokens_total{"))
    assert generated < 100
    def ledger_tokens() -> int | None:  # None until the ledger's next flush (every second)
        with sqlite3.connect(procs.tmp / "coordinator.db") as db:
            total: int | None = db.execute("SELECT SUM(tokens) FROM host_ledger").fetchone()[0]
        return total

    until(lambda: ledger_tokens() is not None, within=15, what="the ledger flush")
    tokens = ledger_tokens()
    assert tokens is not None and tokens < 100
    limited = httpx.get(coordinator.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert limited.headers["RateLimit-Limit"] == "100"  # no credit for work it did not do


def test_a_host_that_rejects_everything_costs_clients_nothing(procs: Processes) -> None:
    p = pool(procs, "400")
    coordinator, fakes = p["coordinator"], p["fakes"]
    fault(fakes["cheat"].url, "400", message="Your key expired: renew at http://evil.example/renew")

    def ask(i: int) -> str:
        reply = httpx.post(coordinator.url + "/v1/chat/completions", timeout=30,
                           json={"model": MODEL, "messages": [{"role": "user", "content": f"reject {i}"}]})
        assert reply.status_code == 200, reply.text
        assert "evil" not in reply.text
        return str(reply.json()["choices"][0]["message"]["content"])

    with ThreadPoolExecutor(6) as ex:  # concurrent, so every host gets a share
        answers = list(ex.map(ask, range(40)))
    assert answers == [expected(f"reject {i}") for i in range(40)]
    cheat = hosts(coordinator)["cheat"]
    rejected = backend_requests(fakes["cheat"].url) - 1  # less its start-up probe
    assert cheat["strikes"] >= 1  # its rejections (and rejected checks) count against it
    assert rejected <= 15, rejected  # a suspect gets fewer jobs, then none (quarantine at 6 strikes)
    assert "evil.example" in coordinator.log.read_text()  # its words went to the log


def test_a_trusted_only_key_never_reaches_a_stranger(procs: Processes) -> None:
    p = pool(procs, None)
    coordinator, fakes = p["coordinator"], p["fakes"]
    store = Store(str(procs.tmp / "coordinator.db"))
    private, _ = store.create_key("private", daily_limit=10**6, per_minute=10**6, trusted_only=True)
    store.close()
    deadline = time.monotonic() + 10
    while hosts(coordinator)["stranger"]["checks_passed"] < 1:  # its check when it joined is over
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = backend_requests(fakes["stranger"].url)
    headers = {"Authorization": f"Bearer {private}"}
    for i in range(10):
        reply = httpx.post(coordinator.url + "/v1/chat/completions", headers=headers, timeout=30,
                           json={"model": MODEL, "messages": [{"role": "user", "content": f"secret {i}"}]})
        assert reply.status_code == 200
    assert backend_requests(fakes["stranger"].url) == before
    # no trusted host for the model: 503, never a stranger
    procs.all[[p.name for p in procs.all].index("trusted")].signal(2)
    wait_models(coordinator.url, {MODEL: 1})
    reply = httpx.post(coordinator.url + "/v1/chat/completions", headers=headers, timeout=30,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "secret"}]})
    assert reply.status_code == 503 and "trusted" in reply.json()["error"]["message"]
    assert backend_requests(fakes["stranger"].url) == before


def test_a_ban_survives_reconnects_and_applies_to_the_credential(procs: Processes) -> None:
    p = pool(procs, None)
    coordinator = p["coordinator"]
    stranger_id = host_id(coordinator, "stranger")
    import subprocess
    import sys

    from tests.harness.procs import ROOT

    out = subprocess.run([sys.executable, "-m", "andy_host.cli", "coordinator", "hosts", "ban", stranger_id,
                          "--reason", "junk answers", "--db", str(procs.tmp / "coordinator.db")],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    stranger = next(proc for proc in procs.all if proc.name == "stranger")
    assert stranger.popen is not None and stranger.popen.wait(10) == 78  # refused for good: it exits
    wait_models(coordinator.url, {MODEL: 1})
    again = procs.agent(coordinator.url, "llamacpp", p["fakes"]["stranger"].url, "stranger", wait=False)
    assert again.popen is not None and again.popen.wait(15) == 78
    assert "banned" in again.wait_event("agent.refused")["reason"]


@pytest.mark.parametrize("mode", ["junk"])
def test_new_hosts_start_at_the_median_speed_not_above_everyone(procs: Processes, mode: str) -> None:
    """Before, an unmeasured host scored 1e6 tokens/s and won every decision until measured."""
    coordinator = procs.coordinator(env=ENV)
    token = trusted_token(procs)
    slow = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.02", name="fake-fast")
    procs.agent(coordinator.url, "llamacpp", slow.url, "measured", "--token", token)
    wait_models(coordinator.url, {MODEL: 1})
    for i in range(3):
        assert chat_stream(coordinator.url, MODEL, f"warm {i} one two three four five").outcome == "complete"
    newcomer = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.02", name="fake-new")
    procs.agent(coordinator.url, "llamacpp", newcomer.url, "newcomer")
    wait_models(coordinator.url, {MODEL: 2})
    base = backend_requests(newcomer.url)
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda i: chat_stream(coordinator.url, MODEL, f"share {i} a b c d e f"), range(20)))
    got = backend_requests(newcomer.url) - base
    assert 2 <= got <= 16, got  # a share, not all of them


def test_deterministic_client_jobs_are_checked_by_asking_a_trusted_host_again(procs: Processes) -> None:
    """A client's own temperature-0 request, answered by a host on probation, is asked
    again of a trusted host: a check the host cannot tell from any other job."""
    p = pool(procs, None)
    coordinator = p["coordinator"]
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: httpx.post(
            coordinator.url + "/v1/chat/completions", timeout=30,
            json={"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": f"exact {i}"}]}),
            range(60)))  # a host in probation takes at most a quarter of the jobs a trusted host could take
    # the checks run after the answers: until one more than the check at joining has passed
    # (every check after a job here is a duplicate one: each job is at temperature 0)
    until(lambda: hosts(coordinator)["stranger"]["checks_passed"] >= 2, 30, "a duplicate check passed")
    duplicates = [e for e in coordinator.events() if e.get("event") == "check.done" and e.get("how") == "client job"
                  and e.get("temperature") == 0]
    assert duplicates and all(e["passed"] for e in duplicates)
