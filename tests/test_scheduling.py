"""Routing, capacity, fairness, ejection and drain against real processes."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai

from andy_host.coordinator.hosthealth import HealthPolicy, HostHealth
from andy_host.coordinator.sqlite_store import SQLiteDatabase as Store
from tests.procs import Processes, get_json, wait_models
from tests.sse import chat_stream

MODEL = "m:latest"


def fault(backend: str, mode: str | None, count: int = -1, **extra: Any) -> None:
    httpx.post(backend + "/_fault", json={"mode": mode, "count": count, **extra}).raise_for_status()


def new_keys(procs: Processes, *names: str) -> dict[str, str]:
    store = Store(str(procs.tmp / "coordinator.db"))
    keys = {name: store.create_key(name, daily_limit=10**6, per_minute=10**6)[0] for name in names}
    store.close()
    return keys


def backend_stats(url: str) -> dict[str, int]:
    return get_json(url + "/_stats")


def test_a_host_never_gets_more_jobs_than_its_capacity(procs: Processes) -> None:
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.03")
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "llamacpp", backend.url, "cap-2", "--max-concurrency", "2")
    wait_models(coordinator.url, {MODEL: 1})
    base = backend_stats(backend.url)["requests"]  # the agent's continuation probe at start-up
    with ThreadPoolExecutor(10) as ex:
        results = list(ex.map(lambda i: chat_stream(coordinator.url, MODEL, f"c{i} a b c d e"), range(10)))
    assert all(r.outcome == "complete" for r in results)
    stats = backend_stats(backend.url)
    assert stats["max_concurrent"] == 2
    assert stats["requests"] == base + 10


def test_one_client_flooding_cannot_starve_another(procs: Processes) -> None:
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.03")
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_QUEUE_TIMEOUT": "30"})
    procs.agent(coordinator.url, "llamacpp", backend.url, "one-slot", "--max-concurrency", "1")
    wait_models(coordinator.url, {MODEL: 1})
    keys = new_keys(procs, "flooder", "single")
    finished: list[tuple[str, float]] = []
    lock = threading.Lock()

    def ask(client: str, i: int) -> None:
        result = chat_stream(coordinator.url, MODEL, f"{client} {i} a b c d e f", headers={"Authorization": f"Bearer {keys[client]}"})
        assert result.outcome == "complete", result
        with lock:
            finished.append((client, time.monotonic()))

    with ThreadPoolExecutor(12) as ex:
        flood = [ex.submit(ask, "flooder", i) for i in range(8)]
        deadline = time.monotonic() + 5
        while get_json(coordinator.url + "/health")["queued"] < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        with lock:
            done_before = len(finished)
        single = ex.submit(ask, "single", 0)
        single.result(timeout=30)
        for f in flood:
            f.result(timeout=30)
    order = [client for client, _ in finished]
    position = order.index("single")
    # only the flooder's job already running when "single" arrived may finish first
    assert position - done_before <= 1, order


def test_failing_host_is_ejected_and_let_back_through_one_probe(procs: Processes) -> None:
    bad = procs.fake("llamacpp", "--model", MODEL, "--label", "pool")
    good = procs.fake("ollama", "--models", MODEL, "--label", "pool", "--nothing-loaded")
    coordinator = procs.coordinator(env={
        "ANDY_HOST_COORDINATOR_EJECT_AFTER": "2", "ANDY_HOST_COORDINATOR_EJECT_BASE": "1.0",
    })
    procs.agent(coordinator.url, "llamacpp", bad.url, "bad")  # model loaded: preferred
    procs.agent(coordinator.url, "ollama", good.url, "good")
    wait_models(coordinator.url, {MODEL: 2})
    fault(bad.url, "500", count=-1)
    base = backend_stats(bad.url)["requests"]  # the agent's continuation probe at start-up

    def ask(n: int) -> None:
        assert chat_stream(coordinator.url, MODEL, f"q{n}").outcome == "complete"

    ask(1)
    ask(2)
    assert backend_stats(bad.url)["requests"] == base + 2  # two failures: ejected
    assert get_json(coordinator.url + "/health")["stats"]["ejections"] == 1
    for n in range(3, 6):
        ask(n)
    assert backend_stats(bad.url)["requests"] == base + 2  # out of rotation
    time.sleep(1.1)
    ask(6)  # the single probe: fails again, ejected for twice as long
    assert backend_stats(bad.url)["requests"] == base + 3
    time.sleep(1.1)
    ask(7)
    assert backend_stats(bad.url)["requests"] == base + 3  # still out (2 s this time)
    fault(bad.url, None, count=0)
    time.sleep(1.0)
    ask(8)  # probe succeeds
    ask(9)
    assert backend_stats(bad.url)["requests"] == base + 5  # back in rotation
    assert get_json(coordinator.url + "/health")["stats"]["ejections"] == 2


def test_speed_is_learned_from_whole_answers(procs: Processes) -> None:
    """A non-streamed answer arrives in one piece: the host's speed is its tokens over
    the whole job (the fake takes 10 ms per token), never a burst's absurd rate."""
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.01")
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "llamacpp", backend.url, "timed")
    wait_models(coordinator.url, {MODEL: 1})
    client = openai.OpenAI(base_url=coordinator.url + "/api/andy/v1", api_key=coordinator.key, max_retries=0)
    for i in range(3):
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"s{i} a b c d e f"}])
        assert reply.usage is not None and reply.usage.completion_tokens > 5
    status = httpx.get(coordinator.url + "/api/andy/pool_status",
                       headers={"Authorization": f"Bearer {coordinator.key}"}).json()
    (host,) = status["hosts"]
    assert host["tokens_per_second"] is not None and 40 < host["tokens_per_second"] <= 100, host
    assert host["time_to_first_token"] is None  # a whole answer has no first token to time


def test_last_host_is_never_ejected_for_slowness() -> None:
    policy = HealthPolicy(eject_after=2)
    health = HostHealth()
    for _ in range(5):
        assert not health.record_failure(0.0, policy, slow=True, last_host=True)
    assert health.admits(0.0, 0)
    assert health.record_failure(0.0, policy, slow=True, last_host=False) is False
    assert health.record_failure(0.0, policy, slow=True, last_host=False) is True
    assert not health.admits(1.0, 0)


def test_queue_limits_answer_429_and_503_with_retry_after(procs: Processes) -> None:
    backend = procs.fake("llamacpp", "--model", MODEL, "--token-delay", "0.2")
    coordinator = procs.coordinator(env={
        "ANDY_HOST_COORDINATOR_MAX_QUEUE": "3", "ANDY_HOST_COORDINATOR_MAX_QUEUE_PER_CLIENT": "2",
        "ANDY_HOST_COORDINATOR_QUEUE_TIMEOUT": "1.5",
    })
    procs.agent(coordinator.url, "llamacpp", backend.url, "tiny", "--max-concurrency", "1")
    wait_models(coordinator.url, {MODEL: 1})
    keys = new_keys(procs, "a", "b")
    with ThreadPoolExecutor(8) as ex:
        a = [ex.submit(chat_stream, coordinator.url, MODEL, "a " * 20, headers={"Authorization": f"Bearer {keys['a']}"}) for _ in range(4)]
        time.sleep(0.4)
        b = [ex.submit(chat_stream, coordinator.url, MODEL, "b " * 20, headers={"Authorization": f"Bearer {keys['b']}"}) for _ in range(3)]
        results_a = [f.result() for f in a]
        results_b = [f.result() for f in b]
    statuses = sorted(r.status for r in results_a + results_b)
    too_many = [r for r in results_a if r.status == 429]
    assert too_many and too_many[0].error["code"] == "rate_limit_exceeded"  # type: ignore[index]
    full = [r for r in results_b if r.status == 503]
    assert full, statuses
    for r in too_many + full:
        assert int(r.headers["retry-after"]) >= 1
    # those that waited past queue_timeout got 503 too; nothing hung
    assert all(r.status in (200, 429, 503) for r in results_a + results_b)


def test_draining_host_finishes_its_job_and_gets_no_new_one(procs: Processes) -> None:
    slow = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.1")
    other = procs.fake("ollama", "--models", MODEL, "--label", "pool", "--nothing-loaded")
    coordinator = procs.coordinator()
    leaving = procs.agent(coordinator.url, "llamacpp", slow.url, "leaving")
    procs.agent(coordinator.url, "ollama", other.url, "staying")
    wait_models(coordinator.url, {MODEL: 2})
    content = "drain " + " ".join(f"w{i}" for i in range(15))
    with ThreadPoolExecutor(1) as ex:
        running = ex.submit(chat_stream, coordinator.url, MODEL, content)
        time.sleep(0.5)
        leaving.signal(signal.SIGTERM)
        leaving.wait_event("agent.draining")
        time.sleep(0.3)
        requests_before = backend_stats(slow.url)["requests"]
        second = chat_stream(coordinator.url, MODEL, "during drain")
        result = running.result(timeout=30)
    assert result.outcome == "complete" and result.text == f"pool heard: {content}"
    assert get_json(coordinator.url + "/health")["stats"]["continued"] == 0  # finished where it ran
    assert second.outcome == "complete"
    assert backend_stats(slow.url)["requests"] == requests_before  # no new job for the draining host
    assert leaving.popen is not None and leaving.popen.wait(10) == 0


def test_routing_prefers_loaded_model(procs: Processes) -> None:
    loaded = procs.fake("ollama", "--models", MODEL, "--label", "loaded")
    cold = procs.fake("ollama", "--models", MODEL, "--label", "cold", "--nothing-loaded")
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "ollama", cold.url, "cold")
    procs.agent(coordinator.url, "ollama", loaded.url, "loaded")
    wait_models(coordinator.url, {MODEL: 2})
    labels = {chat_stream(coordinator.url, MODEL, f"x{i}").text.split()[0] for i in range(4)}
    assert labels == {"loaded"}  # sequential requests: the loaded host always has room
