"""Two coordinator replicas sharing a real Redis (tests/harness/servers.py): a request at A runs
on a host connected to B, token-exact; B SIGKILLed mid-stream: its host moves to A
within 10 s and the stream is rescued (or ends with the explicit error event, never a
truncated success); replicas refuse callers without the shared secret."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.harness.procs import Proc, Processes, get_json
from tests.harness.servers import RedisServer
from tests.harness.sse import StreamResult, _event

MODEL = "cross:latest"
SECRET = "replica-secret-for-tests-0123456789"


def replica(procs: Processes, redis_url: str, name: str, **extra: str) -> Proc:
    env = {"ANDY_HOST_COORDINATOR_REDIS_URL": redis_url, "ANDY_HOST_COORDINATOR_REPLICA_SECRET": SECRET,
           "ANDY_HOST_COORDINATOR_REPLICA_ID": name, "ANDY_HOST_COORDINATOR_DIRECTORY_INTERVAL": "0.2",
           "ANDY_HOST_COORDINATOR_DIRECTORY_TTL": "1.5", **extra}
    return procs.coordinator(env=env, name=name, db=procs.tmp / f"{name}.db")


def wait_peer_model(replica_url: str, peer: str, model: str, timeout: float = 15) -> None:
    """Until ``replica_url`` sees ``peer`` serving ``model`` in the directory."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        seen = get_json(replica_url + "/health").get("replica", {}).get("peers", {})
        if model in seen.get(peer, []):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{replica_url} never saw {model} on {peer}: {seen}")


def wait_hosts(url: str, count: int, timeout: float) -> float:
    """Until the coordinator at ``url`` holds ``count`` hosts; returns the seconds taken."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if get_json(url + "/health")["hosts"] == count:
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not hold {count} hosts within {timeout}s")


def expected(content: str) -> str:
    return f"llamacpp heard: {content}"


def test_stream_at_a_served_by_a_host_on_b(procs: Processes, redis_url: str, redis_server: RedisServer) -> None:
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.01")
    a, b = replica(procs, redis_url, "replica-a"), replica(procs, redis_url, "replica-b")
    procs.agent(b.url, "llamacpp", backend.url, "host-on-b")
    wait_hosts(b.url, 1, 10)
    wait_peer_model(a.url, "replica-b", MODEL)
    assert get_json(a.url + "/health")["hosts"] == 0
    # the directory: B's host, with what B measured of it, expiring unless refreshed
    host_id = redis_server.command("HKEYS", "andy:hosts:replica-b")
    record = json.loads(redis_server.command("HGET", "andy:hosts:replica-b", host_id))
    assert record["models"] == [MODEL] and record["capacity"] >= 1 and record["name"] == "host-on-b"
    assert 0 < int(redis_server.command("PTTL", "andy:hosts:replica-b")) <= 1500

    words = " ".join(f"word{i}" for i in range(40))
    client = openai.OpenAI(base_url=a.url + "/api/andy/v1", api_key="none", max_retries=0, timeout=20)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": words}], stream=True)
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == expected(words)
    assert finish == "stop"
    whole = client.chat.completions.create(model="cross", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == expected("hi")  # short names resolve across replicas too
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    keyed = openai.OpenAI(base_url=a.url + "/api/andy/v1", api_key=a.key, max_retries=0, timeout=20)
    assert [m.id for m in keyed.models.list()] == [MODEL]  # A lists the pool's models, not only its own hosts'
    # A's dashboard and pool_status count the whole pool (B's host too), and say how many replicas
    totals = get_json(a.url + "/api/andy/dashboard")["totals"]
    assert (totals["hosts"], totals["serving_hosts"], totals["models"], totals["replicas"]) == (1, 1, 1, 2)
    status = httpx.get(a.url + "/api/andy/pool_status", headers={"Authorization": f"Bearer {a.key}"}).json()
    assert (status["total_hosts"], status["capacity"], status["replicas"], status["hosts"]) == (1, 2, 2, [])
    crossed = [e for e in a.events() if e.get("event") == "job.crossed"]
    assert len(crossed) == 2 and all(e["replica"] == "replica-b" for e in crossed)
    counts = get_json(b.url + "/health")["replica"]["counts"]
    assert counts["served_for_peers"] == 2


def test_internal_endpoint_needs_the_secret(procs: Processes, redis_url: str) -> None:
    a = replica(procs, redis_url, "replica-a")
    body = {"kind": "chat", "model": MODEL, "request": {"messages": [{"role": "user", "content": "x"}]},
            "needs": [], "client": "", "stream": True, "budget": 5}
    url = a.url + "/api/andy/internal/jobs"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {SECRET}x"}):
        assert httpx.post(url, json=body, headers=headers).status_code == 401
    bad = httpx.post(url, json={**body, "request": {"messages": "no"}}, headers={"Authorization": f"Bearer {SECRET}"})
    assert bad.status_code == 400
    # a coordinator that is not replicated has no such endpoint
    single = procs.coordinator(name="single", db=procs.tmp / "single.db")
    assert httpx.post(single.url + "/api/andy/internal/jobs", json=body).status_code == 404


def _stream_killing(url: str, content: str, victim: Proc) -> tuple[StreamResult, float]:
    """Stream a chat at ``url``; SIGKILL ``victim`` once content has arrived. Returns
    what the client saw and when the kill happened (monotonic)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True}
    killed_at = 0.0
    with httpx.stream("POST", url + "/api/andy/v1/chat/completions", json=body, timeout=60) as resp:
        result = StreamResult(status=resp.status_code)
        assert resp.status_code == 200, resp.read()
        try:
            for line in resp.iter_lines():
                _event(result, line)
                if not killed_at and len(result.text.split()) >= 5:
                    victim.kill()
                    killed_at = time.monotonic()
        except httpx.HTTPError:
            pass
    return result, killed_at


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_replica_killed_mid_stream(procs: Processes, redis_url: str, request: pytest.FixtureRequest,
                                   store: str) -> None:
    extra = {}
    if store == "postgres":
        extra["ANDY_HOST_COORDINATOR_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.1")
    a, b = replica(procs, redis_url, "replica-a", **extra), replica(procs, redis_url, "replica-b", **extra)
    agent = procs.agent(b.url, "llamacpp", backend.url, "mover", "--coordinator", a.url)
    wait_hosts(b.url, 1, 10)
    wait_peer_model(a.url, "replica-b", MODEL)

    words = " ".join(f"w{i}" for i in range(30))
    result, killed_at = _stream_killing(a.url, words, b)
    assert killed_at, "the stream ended before B could be killed"
    wait_hosts(a.url, 1, 10)
    moved = time.monotonic() - killed_at  # at most this long after the kill, the host was on A
    assert result.outcome in ("complete", "error_event"), result  # never a truncated success
    assert result.outcome == "complete", result  # here the host moved in time: rescued
    assert result.text == expected(words)
    connected = [e for e in agent.events() if e.get("event") == "link.connected"]
    assert connected[-1]["url"].startswith(a.url.replace("http://", "ws://"))
    lost = [e for e in a.events() if e.get("event") == "job.replica_lost"]
    assert lost and lost[0]["content_sent"] is True
    assert moved < 10
    deadline = time.monotonic() + 5  # B's directory entry expires with its TTL (1.5 s here)
    while "replica-b" in get_json(a.url + "/health")["replica"]["peers"]:
        assert time.monotonic() < deadline, "B stayed in the directory"
        time.sleep(0.05)
    print(json.dumps({"store": store, "host_moved_within_s": round(moved, 2)}))


def test_agent_rotates_coordinators(procs: Processes, tmp_path: Path) -> None:
    """Several --coordinator: a dead first one is skipped for the next."""
    backend = procs.fake("llamacpp", "--model", MODEL)
    live = procs.coordinator(name="live", db=tmp_path / "live.db")
    agent = procs.agent("http://127.0.0.1:9", "llamacpp", backend.url, "rotor", "--coordinator", live.url)
    assert agent.wait_event("link.connected")["url"].startswith(live.url.replace("http://", "ws://"))
    assert any(e.get("event") == "link.down" and ":9/" in e.get("url", "") for e in agent.events())


def test_replica_killed_and_nobody_can_continue(procs: Processes, redis_url: str) -> None:
    """B's host knows only B: when B dies mid-stream no host can continue the answer,
    and A ends the stream with the explicit error event, no [DONE]."""
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.1")
    a, b = replica(procs, redis_url, "replica-a"), replica(procs, redis_url, "replica-b")
    procs.agent(b.url, "llamacpp", backend.url, "stays-with-b")
    wait_hosts(b.url, 1, 10)
    wait_peer_model(a.url, "replica-b", MODEL)
    result, killed_at = _stream_killing(a.url, " ".join(f"w{i}" for i in range(30)), b)
    assert killed_at, "the stream ended before B could be killed"
    assert result.outcome == "error_event", result
    assert result.error is not None and result.error["code"] == "stream_interrupted"
    assert result.text and not result.done
