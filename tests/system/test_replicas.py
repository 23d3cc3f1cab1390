"""Two coordinator replicas sharing a real Redis (tests/harness/servers.py): a request at A runs
on a host connected to B, token-exact; B SIGKILLed mid-stream: its host moves to A
and the stream is rescued (or ends with the explicit error event, never a truncated
success); replicas refuse callers without the shared secret."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.harness.procs import Proc, Processes, get_json, until
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


def wait_hosts(url: str, count: int, timeout: float = 20) -> None:
    """Until the coordinator at ``url`` holds ``count`` hosts (``timeout``: a bound for a
    loaded machine, not a measure of speed)."""
    until(lambda: get_json(url + "/health")["hosts"] == count, timeout, f"{url} holding {count} hosts")


def expected(content: str) -> str:
    return f"llamacpp heard: {content}"


def test_stream_at_a_served_by_a_host_on_b(procs: Processes, redis_url: str, redis_server: RedisServer) -> None:
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.01")
    a, b = replica(procs, redis_url, "replica-a"), replica(procs, redis_url, "replica-b")
    procs.agent(b.url, "llamacpp", backend.url, "host-on-b")
    wait_hosts(b.url, 1)
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


def _stream_killing(url: str, content: str, victim: Proc) -> tuple[StreamResult, bool]:
    """Stream a chat at ``url``; SIGKILL ``victim`` once content has arrived. Returns
    what the client saw and whether the kill happened while it streamed."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": True}
    killed = False
    with httpx.stream("POST", url + "/api/andy/v1/chat/completions", json=body, timeout=60) as resp:
        result = StreamResult(status=resp.status_code)
        assert resp.status_code == 200, resp.read()
        try:
            for line in resp.iter_lines():
                _event(result, line)
                if not killed and len(result.text.split()) >= 5:
                    victim.kill()
                    killed = True
        except httpx.HTTPError:
            pass
    return result, killed


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_replica_killed_mid_stream(procs: Processes, redis_url: str, request: pytest.FixtureRequest,
                                   store: str) -> None:
    extra = {}
    if store == "postgres":
        extra["ANDY_HOST_COORDINATOR_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.1")
    a, b = replica(procs, redis_url, "replica-a", **extra), replica(procs, redis_url, "replica-b", **extra)
    agent = procs.agent(b.url, "llamacpp", backend.url, "mover", "--coordinator", a.url)
    wait_hosts(b.url, 1)
    wait_peer_model(a.url, "replica-b", MODEL)
    on_b = len(agent.notices)  # its link to B is up; what it says from here is about the kill

    words = " ".join(f"w{i}" for i in range(30))
    result, killed = _stream_killing(a.url, words, b)
    assert killed, "the stream ended before B could be killed"
    assert result.outcome in ("complete", "error_event"), result  # never a truncated success
    assert result.outcome == "complete", result  # here the host moved in time: rescued
    assert result.text == expected(words)
    # the host lost B and is on A now, as it says itself (the rescue above was the deadline)
    agent.wait_disconnected(after=on_b)
    agent.wait_notice(f"STATUS=connected to {a.url} as ", after=on_b)
    wait_hosts(a.url, 1)
    lost = [e for e in a.events() if e.get("event") == "job.replica_lost"]
    assert lost and lost[0]["content_sent"] is True
    # B's directory entry expires with its TTL (1.5 s here)
    until(lambda: "replica-b" not in get_json(a.url + "/health")["replica"]["peers"], 20,
          "B leaving the directory")


def test_agent_rotates_coordinators(procs: Processes, tmp_path: Path) -> None:
    """Several --coordinator: a dead first one is skipped for the next."""
    backend = procs.fake("llamacpp", "--model", MODEL)
    live = procs.coordinator(name="live", db=tmp_path / "live.db")
    agent = procs.agent("http://127.0.0.1:9", "llamacpp", backend.url, "rotor", "--coordinator", live.url)
    assert agent.links()[:2] == ["down", "up"]  # the first failed, then the next one took it
    assert agent.wait_notice("STATUS=connected to ").startswith(f"STATUS=connected to {live.url} as ")
    assert any(e.get("event") == "link.down" and ":9/" in e.get("url", "") for e in agent.events())


def test_replica_killed_and_nobody_can_continue(procs: Processes, redis_url: str) -> None:
    """B's host knows only B: when B dies mid-stream no host can continue the answer,
    and A ends the stream with the explicit error event, no [DONE]."""
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.1")
    a, b = replica(procs, redis_url, "replica-a"), replica(procs, redis_url, "replica-b")
    procs.agent(b.url, "llamacpp", backend.url, "stays-with-b")
    wait_hosts(b.url, 1)
    wait_peer_model(a.url, "replica-b", MODEL)
    result, killed = _stream_killing(a.url, " ".join(f"w{i}" for i in range(30)), b)
    assert killed, "the stream ended before B could be killed"
    assert result.outcome == "error_event", result
    assert result.error is not None and result.error["code"] == "stream_interrupted"
    assert result.text and not result.done
