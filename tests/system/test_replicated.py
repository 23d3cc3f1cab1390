"""Two coordinator replicas sharing one real Redis and one real PostgreSQL: limits are
exact across them, and keys created or revoked through one hold on the other."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.harness.procs import ROOT, Proc, Processes, until, wait_models

MODEL = "m:latest"
ADMIN = "admin-token-for-the-replica-tests"


def replica(procs: Processes, name: str, redis_url: str, postgres_url: str, **env: str) -> Proc:
    return procs.coordinator(name=name, db=procs.tmp / f"{name}-unused.db", env={
        "ANDY_HOST_COORDINATOR_REDIS_URL": redis_url,
        "ANDY_HOST_COORDINATOR_DATABASE_URL": postgres_url,
        "ANDY_HOST_COORDINATOR_REPLICA_SECRET": "a-shared-secret-of-the-replicas",
        "ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ADMIN,
        **env,
    })


@pytest.fixture
def pair(procs: Processes, redis_url: str, postgres_url: str) -> Iterator[tuple[Proc, Proc, str]]:
    """Replicas A and B, each with a host serving MODEL; and the database URL."""
    # no poll of the store within a test: what arrives came by NOTIFY or pub/sub
    env = {"ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "10", "ANDY_HOST_COORDINATOR_FLUSH_INTERVAL": "30"}
    a = replica(procs, "A", redis_url, postgres_url, **env)
    b = replica(procs, "B", redis_url, postgres_url, **env)
    backend = procs.fake("ollama", "--models", MODEL)
    procs.agent(a.url, "ollama", backend.url, "host-a")
    procs.agent(b.url, "ollama", backend.url, "host-b", "--state-dir", str(procs.tmp / "state-b"))
    wait_models(a.url, {MODEL: 1})
    wait_models(b.url, {MODEL: 1})
    yield a, b, postgres_url


def chat(base: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/api/andy/v1", api_key=key, max_retries=0, timeout=15)


def ask(client: openai.OpenAI) -> str:
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


def test_the_anonymous_limit_is_exact_across_replicas(pair: tuple[Proc, Proc, str]) -> None:
    a, b, _ = pair
    clients = [chat(a.url), chat(b.url)]
    for i in range(10):  # alternating A, B: ten in all pass
        assert ask(clients[i % 2])
    for client in clients:  # the 11th is refused wherever it arrives
        with pytest.raises(openai.RateLimitError) as refused:
            ask(client)
        assert refused.value.status_code == 429
        assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 60


def test_a_key_made_on_one_replica_works_on_the_other_until_revoked(pair: tuple[Proc, Proc, str]) -> None:
    a, b, database_url = pair
    admin = {"Authorization": f"Bearer {ADMIN}"}
    made = httpx.post(a.url + "/api/andy/admin/keys", json={"name": "bot", "daily_limit": 3}, headers=admin)
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert ask(chat(b.url, key))  # made through A, accepted by B
    assert ask(chat(a.url, key))
    revoked = httpx.delete(a.url + f"/api/andy/admin/keys/{key[:14]}", headers=admin)
    assert revoked.status_code == 200, revoked.text
    def refused_by_b() -> openai.AuthenticationError | None:
        try:
            ask(chat(b.url, key))
        except openai.AuthenticationError as refused:
            return refused
        return None

    refused = until(refused_by_b, within=10, what="B refusing a key revoked through A", every=0.02)
    assert refused.code == "key_revoked" and "was revoked on" in refused.message, refused.body
    # a key made with the CLI on the shared database, used up across both replicas
    cli = subprocess.run(
        [sys.executable, "-m", "andy_host.cli", "coordinator", "keys", "create", "--name", "cli",
         "--daily-limit", "3", "--database-url", database_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    other = cli.stdout.strip()
    assert ask(chat(a.url, other)) and ask(chat(b.url, other)) and ask(chat(a.url, other))
    with pytest.raises(openai.RateLimitError, match="per day"):
        ask(chat(b.url, other))


def test_a_ban_through_one_replica_drops_the_host_on_the_other_at_once(
    procs: Processes, pair: tuple[Proc, Proc, str]
) -> None:
    a, b, _ = pair
    host_b = next(p for p in procs.all if p.name == "host-b")
    host_id = host_b.host_id
    banned = httpx.post(a.url + f"/api/andy/admin/hosts/{host_id}/ban", json={"reason": "junk"},
                        headers={"Authorization": f"Bearer {ADMIN}"})
    assert banned.status_code == 200, banned.text
    dropped = b.wait_event("host.dropped_by_admin", timeout=10, host_id=host_id)
    assert "junk" in dropped["reason"], dropped
