"""Scheduling and failover against a fault-injecting backend.

Two hosts serve model ``m``: host F wraps the fault-injecting llama.cpp fake (model
loaded, so the scheduler always tries it first), host G wraps the Ollama fake (nothing
loaded). Both generate the same deterministic text, so a continued answer can be
compared with the expected one exactly.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.procs import Processes, get_json, wait_models
from tests.sse import chat_stream

MODEL = "m:latest"
FAILOVER_ENV = {
    "ANDY_HOST_COORDINATOR_TTFT_TIMEOUT": "1.5",
    "ANDY_HOST_COORDINATOR_TOKEN_TIMEOUT": "1.0",
    "ANDY_HOST_COORDINATOR_ANSWER_TIMEOUT": "1.5",
    "ANDY_HOST_COORDINATOR_EJECT_AFTER": "1000",
}


def expected(content: str) -> str:
    return f"pool heard: {content}"


@pytest.fixture(scope="module")
def pool(module_procs: Processes) -> dict[str, Any]:
    f = module_procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.01", name="backend-F")
    g = module_procs.fake("ollama", "--models", MODEL, "--label", "pool", "--nothing-loaded", "--token-delay", "0.01",
                          name="backend-G")
    coordinator = module_procs.coordinator(env=FAILOVER_ENV)
    module_procs.agent(coordinator.url, "llamacpp", f.url, "host-F")
    module_procs.agent(coordinator.url, "ollama", g.url, "host-G")
    wait_models(coordinator.url, {MODEL: 2})
    return {"url": coordinator.url, "F": f.url, "G": g.url, "key": coordinator.key}


def fault(backend: str, mode: str, count: int = 1, **extra: Any) -> None:
    httpx.post(backend + "/_fault", json={"mode": mode, "count": count, **extra}).raise_for_status()


def stats(url: str) -> dict[str, int]:
    return get_json(url + "/_stats")


def pool_stats(base: str) -> dict[str, int]:
    return get_json(base + "/health")["stats"]


@pytest.mark.parametrize("mode", ["500", "reset", "hang", "late"])
def test_fault_before_first_token_fails_over_invisibly(pool: dict[str, Any], mode: str) -> None:
    before_f, before = stats(pool["F"]), pool_stats(pool["url"])
    # a reset on a kept-alive connection is sent once more on a new one first (see the
    # next test): two resets make sure F fails this job either way
    count = 2 if mode == "reset" else 1
    fault(pool["F"], mode, count=count, delay=3.0)
    result = chat_stream(pool["url"], MODEL, f"before {mode} one two three four")
    assert result.outcome == "complete", result
    assert result.text == expected(f"before {mode} one two three four")
    assert before_f["faults"] + 1 <= stats(pool["F"])["faults"] <= before_f["faults"] + count
    fault(pool["F"], None, count=0)
    after = pool_stats(pool["url"])
    assert after["rescued"] == before["rescued"] + 1
    # the pool still serves, from F again
    again = chat_stream(pool["url"], MODEL, "after")
    assert again.outcome == "complete" and again.text == expected("after")


def test_reset_of_a_kept_alive_connection_is_retried_on_a_new_one(pool: dict[str, Any]) -> None:
    """Backends close idle keep-alive connections (llama-server after 5 s); a request
    that meets such a connection closing, before any byte of an answer, is sent once
    more on a new connection to the same backend instead of failing the host."""
    assert chat_stream(pool["url"], MODEL, "warm up F").outcome == "complete"  # F now has a pooled connection
    before_f, before = stats(pool["F"]), pool_stats(pool["url"])
    fault(pool["F"], "reset", count=1)
    result = chat_stream(pool["url"], MODEL, "stale connection one two")
    assert result.outcome == "complete" and result.text == expected("stale connection one two")
    after_f, after = stats(pool["F"]), pool_stats(pool["url"])
    assert after_f["faults"] == before_f["faults"] + 1
    assert after_f["completed"] == before_f["completed"] + 1  # F itself answered, on the new connection
    assert after["failovers"] == before["failovers"] and after["rescued"] == before["rescued"]


@pytest.mark.parametrize("mode", ["503", "429"])
def test_backend_retry_after_is_honoured_for_that_host(pool: dict[str, Any], mode: str) -> None:
    fault(pool["F"], mode, retry_after=2)
    first = chat_stream(pool["url"], MODEL, f"busy {mode}")
    assert first.outcome == "complete" and first.text == expected(f"busy {mode}")
    requests_f = stats(pool["F"])["requests"]
    for i in range(3):  # within Retry-After: F is not hammered, G answers
        assert chat_stream(pool["url"], MODEL, f"cool {i}").outcome == "complete"
    assert stats(pool["F"])["requests"] == requests_f
    time.sleep(2.1)  # the cool-down ends; F takes jobs again
    assert chat_stream(pool["url"], MODEL, "warm").outcome == "complete"
    assert stats(pool["F"])["requests"] == requests_f + 1


@pytest.mark.parametrize("mode", ["stall", "cut", "malformed"])
def test_fault_mid_stream_continues_on_another_host(pool: dict[str, Any], mode: str) -> None:
    content = f"mid {mode} alpha beta gamma delta epsilon zeta eta theta"
    before, before_g = pool_stats(pool["url"]), stats(pool["G"])
    fault(pool["F"], mode)
    result = chat_stream(pool["url"], MODEL, content)
    assert result.outcome == "complete", result
    assert result.text == expected(content)  # no gap, no repeated prefix
    after = pool_stats(pool["url"])
    assert after["continued"] == before["continued"] + 1
    assert after["rescued"] == before["rescued"] + 1
    assert stats(pool["G"])["continuations"] == before_g["continuations"] + 1


def test_echoed_prefix_is_stripped_when_llamacpp_continues(procs: Processes) -> None:
    # here the continuing host is a llama.cpp fake, which echoes the prefix like the real one
    a = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.01")
    b = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.01")
    coordinator = procs.coordinator(env=FAILOVER_ENV)
    procs.agent(coordinator.url, "llamacpp", a.url, "host-a")
    procs.agent(coordinator.url, "llamacpp", b.url, "host-b")
    wait_models(coordinator.url, {MODEL: 2})
    fault(a.url, "cut", count=-1, fresh_only=True)  # whichever goes first cuts; the other continues
    fault(b.url, "cut", count=-1, fresh_only=True)
    probes = stats(a.url)["continuations"] + stats(b.url)["continuations"]  # each agent's start-up probe
    content = "echo test one two three four five six"
    result = chat_stream(coordinator.url, MODEL, content)
    assert result.outcome == "complete", result
    assert result.text == expected(content)
    assert stats(a.url)["continuations"] + stats(b.url)["continuations"] == probes + 1


def test_omitted_done_is_still_a_complete_answer(pool: dict[str, Any]) -> None:
    before = pool_stats(pool["url"])
    fault(pool["F"], "no_done")
    result = chat_stream(pool["url"], MODEL, "no done here")
    assert result.outcome == "complete" and result.text == expected("no done here")
    assert pool_stats(pool["url"])["failovers"] == before["failovers"]


def test_nobody_can_continue_ends_with_an_error_event(pool: dict[str, Any]) -> None:
    fault(pool["F"], "cut")
    fault(pool["G"], "reject_prefix")
    result = chat_stream(pool["url"], MODEL, "doomed one two three four five six")
    assert result.outcome == "error_event", result
    assert not result.done  # never a truncated answer presented as a success
    assert result.text and expected("doomed one two three four five six").startswith(result.text)
    assert "no other host could continue" in result.error["message"]  # type: ignore[index]
    # G is recorded as unable to continue; the pool still serves
    assert chat_stream(pool["url"], MODEL, "still fine").outcome == "complete"


def test_non_streaming_is_retried_to_completion(pool: dict[str, Any]) -> None:
    """Answers that are not streamed are asked of the backend whole; a host that fails
    one (error, dropped connection, hang past answer_timeout, broken body) is left for
    another, and the client still gets the whole answer."""
    client = openai.OpenAI(base_url=pool["url"] + "/api/andy/v1", api_key=pool["key"], max_retries=0)
    for mode in ("500", "cut", "stall", "malformed"):
        faults, rescued = stats(pool["F"])["faults"], pool_stats(pool["url"])["rescued"]
        count = 2 if mode == "cut" else 1  # a dropped kept-alive connection is retried once first
        fault(pool["F"], mode, count=count)
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"whole {mode} a b c d e f"}]
        )
        assert reply.choices[0].message.content == expected(f"whole {mode} a b c d e f")
        assert reply.choices[0].finish_reason == "stop"
        assert faults + 1 <= stats(pool["F"])["faults"] <= faults + count  # F really failed it
        assert pool_stats(pool["url"])["rescued"] == rescued + 1
        fault(pool["F"], None, count=0)


def test_context_length_error_is_400_when_a_second_host_agrees(procs: Processes) -> None:
    """One host's word that a prompt is too long is not enough (a hostile host could cut
    off every long chat); when the second host says so too, the client gets the 400."""
    fakes = [procs.fake("llamacpp", "--model", MODEL, "--label", "pool", name=f"ctx-{i}") for i in range(3)]
    coordinator = procs.coordinator(env=FAILOVER_ENV)
    for i, fake in enumerate(fakes):
        procs.agent(coordinator.url, "llamacpp", fake.url, f"ctx-host-{i}")
        fault(fake.url, "ctx", count=-1)
    wait_models(coordinator.url, {MODEL: 3})
    before = sum(stats(f.url)["requests"] for f in fakes)
    client = openai.OpenAI(base_url=coordinator.url + "/api/andy/v1", api_key=coordinator.key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "long"}])
    assert err.value.code == "context_length_exceeded"
    assert sum(stats(f.url)["requests"] for f in fakes) == before + 2  # asked twice, not three times


def test_one_hosts_context_error_is_tried_elsewhere(pool: dict[str, Any]) -> None:
    fault(pool["F"], "ctx")
    client = openai.OpenAI(base_url=pool["url"] + "/api/andy/v1", api_key=pool["key"], max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "not long"}])
    assert reply.choices[0].message.content == expected("not long")
    fault(pool["F"], None, count=0)


def test_client_disconnect_cancels_the_backend_generation(pool: dict[str, Any]) -> None:
    aborted = stats(pool["F"])["aborted"]
    fault(pool["F"], "slow", delay=0.2)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "w " * 40}], "stream": True}
    with httpx.stream("POST", pool["url"] + "/v1/chat/completions", json=body, timeout=10) as resp:
        lines = resp.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data: "):
                seen += 1
            if seen >= 3:
                break
    # leaving the with-block closed the connection mid-stream
    deadline = time.monotonic() + 5
    while stats(pool["F"])["aborted"] == aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats(pool["F"])["aborted"] == aborted + 1
