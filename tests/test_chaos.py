"""Hosts killed, frozen and restarted under load: every request ends complete or with
an explicit error, none truncated, none left hanging."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.harness.procs import Processes, get_json, wait_models
from tests.harness.sse import chat_stream

MODEL = "m:latest"
CHAOS_ENV = {
    "ANDY_HOST_COORDINATOR_TTFT_TIMEOUT": "2",
    "ANDY_HOST_COORDINATOR_TOKEN_TIMEOUT": "1.5",
    "ANDY_HOST_COORDINATOR_HOST_TIMEOUT": "2",
    "ANDY_HOST_COORDINATOR_QUEUE_TIMEOUT": "10",
    "ANDY_HOST_COORDINATOR_MAX_ATTEMPTS": "6",
    "ANDY_HOST_COORDINATOR_EJECT_AFTER": "1000",
}


def expected(content: str) -> str:
    return f"pool heard: {content}"


def test_sigkill_host_mid_stream_is_continued(procs: Processes) -> None:
    slow = procs.fake("ollama", "--models", MODEL, "--label", "pool", "--token-delay", "0.1")
    other = procs.fake("ollama", "--models", MODEL, "--label", "pool", "--token-delay", "0.01", "--nothing-loaded")
    coordinator = procs.coordinator(env=CHAOS_ENV)
    victim = procs.agent(coordinator.url, "ollama", slow.url, "victim")  # model loaded: chosen first
    procs.agent(coordinator.url, "ollama", other.url, "survivor")
    wait_models(coordinator.url, {MODEL: 2})
    content = "kill me " + " ".join(f"w{i}" for i in range(30))
    killer = threading.Timer(1.0, victim.kill)  # about ten tokens in
    killer.start()
    result = chat_stream(coordinator.url, MODEL, content)
    killer.join()
    assert result.outcome == "complete", result
    assert result.text == expected(content)
    assert get_json(coordinator.url + "/health")["stats"]["continued"] == 1


def test_frozen_host_is_declared_dead_and_its_job_moves(procs: Processes) -> None:
    slow = procs.fake("ollama", "--models", MODEL, "--label", "pool", "--token-delay", "0.1")
    other = procs.fake("ollama", "--models", MODEL, "--label", "pool", "--nothing-loaded")
    coordinator = procs.coordinator(env=CHAOS_ENV)
    frozen = procs.agent(coordinator.url, "ollama", slow.url, "frozen")
    procs.agent(coordinator.url, "ollama", other.url, "alive")
    wait_models(coordinator.url, {MODEL: 2})
    content = "freeze " + " ".join(f"w{i}" for i in range(20))
    timer = threading.Timer(0.8, frozen.signal, args=(signal.SIGSTOP,))
    timer.start()
    try:
        result = chat_stream(coordinator.url, MODEL, content)
        assert result.outcome == "complete", result
        assert result.text == expected(content)
        # no pong, no heartbeat: dead at host_timeout (3 s here); TimeoutError if it is kept
        wait_models(coordinator.url, {MODEL: 1}, timeout=15)
        dropped = [e["host_id"] for e in coordinator.events() if e.get("event") == "host.disconnected"]
        assert dropped == [frozen.host_id]  # the frozen one, and only it
    finally:
        timer.join()
        frozen.signal(signal.SIGCONT)
    wait_models(coordinator.url, {MODEL: 2}, timeout=15)  # it comes back by itself


def test_randomised_kills_and_restarts_lose_nothing(procs: Processes) -> None:
    chaos_rng = random.Random(1234)  # the chaos thread's own; each request draws from its own seed
    backends = [
        procs.fake("ollama", "--models", MODEL, "--label", "pool", "--token-delay", "0.01", name=f"chaos-backend-{i}")
        for i in range(3)
    ]
    coordinator = procs.coordinator(env=CHAOS_ENV)
    agents = [procs.agent(coordinator.url, "ollama", b.url, f"chaos-{i}") for i, b in enumerate(backends)]
    wait_models(coordinator.url, {MODEL: 3})
    stop = threading.Event()
    kills: Counter[str] = Counter()

    def chaos() -> None:
        while not stop.is_set():
            time.sleep(chaos_rng.uniform(0.3, 0.8))
            i = chaos_rng.randrange(3)
            agent = agents[i]
            alive = sum(a.popen is not None and a.popen.poll() is None for a in agents)
            # kill only while another host is connected, not merely started: on a loaded
            # machine a restarted agent takes seconds to connect, and killing the one
            # connected host then measures how fast this machine starts processes
            connected = get_json(coordinator.url + "/health")["hosts"]
            if agent.popen is not None and agent.popen.poll() is None and alive > 1 and connected > 1:
                agent.kill() if chaos_rng.random() < 0.7 else agent.signal(signal.SIGINT)
                kills["killed"] += 1
            elif agent.popen is not None and agent.popen.poll() is not None:
                agents[i] = procs.agent(coordinator.url, "ollama", backends[i].url, f"chaos-{i}", wait=False)
                kills["restarted"] += 1

    errors: Counter[str] = Counter()

    def one(n: int) -> tuple[str, bool]:
        content = f"req {n} " + " ".join(f"t{j}" for j in range(random.Random(n).randrange(5, 25)))
        result = chat_stream(coordinator.url, MODEL, content, timeout=60)
        exact = result.outcome != "complete" or result.text == expected(content)
        if result.outcome == "error_event":  # what went out before the error is the answer's start
            exact = expected(content).startswith(result.text)
        if result.error:
            errors[f"{result.status} {result.error.get('code')}"] += 1
        return result.outcome, exact

    chaos_thread = threading.Thread(target=chaos)
    chaos_thread.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(200)))
    finally:
        stop.set()
        chaos_thread.join()
    outcomes = Counter(outcome for outcome, _ in results)
    stats = get_json(coordinator.url + "/health")["stats"]
    print(f"\nchaos: {dict(outcomes)}; errors {dict(errors)}; hosts {dict(kills)}; pool stats {stats}")
    assert len(results) == 200  # none left hanging (each has a 60 s client timeout)
    assert outcomes["broken"] == 0  # never a silent cut
    assert all(exact for _, exact in results)  # never a wrong or truncated "success"
    assert kills["killed"] >= 3
    # Most complete: a host is killed only while another is connected. (When the chaos
    # killed whatever was running, 146 to 198 completed on a quiet machine but 61 and 93
    # with both cores kept busy: the rest were 503s while restarted hosts connected.)
    assert outcomes["complete"] >= 100
    # What did not complete ended explicitly, as designed. Before any content, with an
    # error status: refused up front (no host connected at that instant), or its host
    # was lost and no other connected host could take the job (none waits for a host
    # to connect). After content, on the 200 stream whose headers went out with the
    # first content: the stream_interrupted error event, never [DONE] (outcome
    # "error_event"; a stream that just stops is "broken", asserted 0 above).
    before_content = {"503 no_available_hosts", "502 host_lost", "504 timeout"}
    assert set(errors) <= before_content | {"200 stream_interrupted"}, errors
    assert errors["200 stream_interrupted"] == outcomes["error_event"]
    assert stats["rescued"] >= 1
    assert stats["completed"] == outcomes["complete"]
