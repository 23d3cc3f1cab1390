"""Failover in one event loop (tests/inproc.py): every fault a backend can show, before
the first token and mid-stream, streamed and not; the client sees a complete answer
or an explicit error event, never a truncated success. Each test has a pool of its
own, so no host's health carries over from another test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import inproc
from tests.inproc import backend_stats, fault
from tests.sse import achat_stream

MODEL = "m:latest"
FAILOVER = {"ttft_timeout": 1.5, "token_timeout": 1.0, "answer_timeout": 1.5, "eject_after": 1000}


def expected(content: str) -> str:
    return f"pool heard: {content}"


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """F (llama.cpp, model loaded: chosen first) and G (Ollama, nothing loaded)."""
    async with AsyncExitStack() as stack:
        f = await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL, token_delay=0.01))
        g = await stack.enter_async_context(inproc.fake("ollama", models=MODEL, nothing_loaded=True,
                                                        token_delay=0.01))
        coordinator = await stack.enter_async_context(inproc.coordinator(tmp_path, **FAILOVER))
        await stack.enter_async_context(inproc.agent(coordinator, "llamacpp", f, "host-F"))
        await stack.enter_async_context(inproc.agent(coordinator, "ollama", g, "host-G"))
        await coordinator.models({MODEL: 2})
        yield {"pool": coordinator, "url": coordinator.url, "F": f, "G": g}


def stats(pool: dict[str, Any]) -> dict[str, int]:
    return dict(pool["pool"].stats.as_dict())


@pytest.mark.parametrize("mode", ["500", "reset", "hang", "late"])
async def test_fault_before_first_token_fails_over_invisibly(pool: dict[str, Any], mode: str) -> None:
    before_f, before = (await backend_stats(pool["F"])), stats(pool)
    # a reset on a kept-alive connection is sent once more on a new one first (see the
    # next test): two resets make sure F fails this job either way
    count = 2 if mode == "reset" else 1
    await fault(pool["F"], mode, count=count, delay=3.0)
    result = await achat_stream(pool["url"], MODEL, f"before {mode} one two three four")
    assert result.outcome == "complete", result
    assert result.text == expected(f"before {mode} one two three four")
    assert before_f["faults"] + 1 <= (await backend_stats(pool["F"]))["faults"] <= before_f["faults"] + count
    await fault(pool["F"], None, count=0)
    after = stats(pool)
    assert after["rescued"] == before["rescued"] + 1
    # the pool still serves, from F again
    again = await achat_stream(pool["url"], MODEL, "after")
    assert again.outcome == "complete" and again.text == expected("after")


async def test_reset_of_a_kept_alive_connection_is_retried_on_a_new_one(pool: dict[str, Any]) -> None:
    """Backends close idle keep-alive connections (llama-server after 5 s); a request
    that meets such a connection closing, before any byte of an answer, is sent once
    more on a new connection to the same backend instead of failing the host."""
    assert (await achat_stream(pool["url"], MODEL, "warm up F")).outcome == "complete"  # F now has a pooled connection
    before_f, before = (await backend_stats(pool["F"])), stats(pool)
    await fault(pool["F"], "reset", count=1)
    result = await achat_stream(pool["url"], MODEL, "stale connection one two")
    assert result.outcome == "complete" and result.text == expected("stale connection one two")
    after_f, after = (await backend_stats(pool["F"])), stats(pool)
    assert after_f["faults"] == before_f["faults"] + 1
    assert after_f["completed"] == before_f["completed"] + 1  # F itself answered, on the new connection
    assert after["failovers"] == before["failovers"] and after["rescued"] == before["rescued"]


@pytest.mark.parametrize("mode", ["503", "429"])
async def test_backend_retry_after_is_honoured_for_that_host(pool: dict[str, Any], mode: str) -> None:
    await fault(pool["F"], mode, retry_after=2)
    first = await achat_stream(pool["url"], MODEL, f"busy {mode}")
    assert first.outcome == "complete" and first.text == expected(f"busy {mode}")
    requests_f = (await backend_stats(pool["F"]))["requests"]
    for i in range(3):  # within Retry-After: F is not hammered, G answers
        assert (await achat_stream(pool["url"], MODEL, f"cool {i}")).outcome == "complete"
    assert (await backend_stats(pool["F"]))["requests"] == requests_f
    await asyncio.sleep(2.1)  # the cool-down ends; F takes jobs again
    assert (await achat_stream(pool["url"], MODEL, "warm")).outcome == "complete"
    assert (await backend_stats(pool["F"]))["requests"] == requests_f + 1


@pytest.mark.parametrize("mode", ["stall", "cut", "malformed"])
async def test_fault_mid_stream_continues_on_another_host(pool: dict[str, Any], mode: str) -> None:
    content = f"mid {mode} alpha beta gamma delta epsilon zeta eta theta"
    before, before_g = stats(pool), (await backend_stats(pool["G"]))
    await fault(pool["F"], mode)
    result = await achat_stream(pool["url"], MODEL, content)
    assert result.outcome == "complete", result
    assert result.text == expected(content)  # no gap, no repeated prefix
    after = stats(pool)
    assert after["continued"] == before["continued"] + 1
    assert after["rescued"] == before["rescued"] + 1
    assert (await backend_stats(pool["G"]))["continuations"] == before_g["continuations"] + 1


async def test_echoed_prefix_is_stripped_when_llamacpp_continues(tmp_path: Path) -> None:
    # here the continuing host is a llama.cpp fake, which echoes the prefix like the real one
    async with inproc.fake("llamacpp", model=MODEL, token_delay=0.01) as a, \
            inproc.fake("llamacpp", model=MODEL, token_delay=0.01) as b, \
            inproc.coordinator(tmp_path, **FAILOVER) as coordinator, \
            inproc.agent(coordinator, "llamacpp", a, "host-a"), inproc.agent(coordinator, "llamacpp", b, "host-b"):
        await coordinator.models({MODEL: 2})
        await fault(a, "cut", count=-1, fresh_only=True)  # whichever goes first cuts; the other continues
        await fault(b, "cut", count=-1, fresh_only=True)
        probes = (await backend_stats(a))["continuations"] + (await backend_stats(b))["continuations"]
        content = "echo test one two three four five six"
        result = await achat_stream(coordinator.url, MODEL, content)
        assert result.outcome == "complete", result
        assert result.text == expected(content)
        assert (await backend_stats(a))["continuations"] + (await backend_stats(b))["continuations"] == probes + 1


async def test_omitted_done_is_still_a_complete_answer(pool: dict[str, Any]) -> None:
    before = stats(pool)
    await fault(pool["F"], "no_done")
    result = await achat_stream(pool["url"], MODEL, "no done here")
    assert result.outcome == "complete" and result.text == expected("no done here")
    assert stats(pool)["failovers"] == before["failovers"]


async def test_nobody_can_continue_ends_with_an_error_event(pool: dict[str, Any]) -> None:
    await fault(pool["F"], "cut")
    await fault(pool["G"], "reject_prefix")
    result = await achat_stream(pool["url"], MODEL, "doomed one two three four five six")
    assert result.outcome == "error_event", result
    assert not result.done  # never a truncated answer presented as a success
    assert result.text and expected("doomed one two three four five six").startswith(result.text)
    assert "no other host could continue" in result.error["message"]  # type: ignore[index]
    # G is recorded as unable to continue; the pool still serves
    assert (await achat_stream(pool["url"], MODEL, "still fine")).outcome == "complete"


async def test_non_streaming_is_retried_to_completion(pool: dict[str, Any]) -> None:
    """Answers that are not streamed are asked of the backend whole; a host that fails
    one (error, dropped connection, hang past answer_timeout, broken body) is left for
    another, and the client still gets the whole answer."""
    client = pool["pool"].client()
    for mode in ("500", "cut", "stall", "malformed"):
        faults, rescued = (await backend_stats(pool["F"]))["faults"], stats(pool)["rescued"]
        count = 2 if mode == "cut" else 1  # a dropped kept-alive connection is retried once first
        await fault(pool["F"], mode, count=count)
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"whole {mode} a b c d e f"}]
        )
        assert reply.choices[0].message.content == expected(f"whole {mode} a b c d e f")
        assert reply.choices[0].finish_reason == "stop"
        assert faults + 1 <= (await backend_stats(pool["F"]))["faults"] <= faults + count  # F really failed it
        assert stats(pool)["rescued"] == rescued + 1
        await fault(pool["F"], None, count=0)


async def test_context_length_error_is_400_when_a_second_host_agrees(tmp_path: Path) -> None:
    """One host's word that a prompt is too long is not enough (a hostile host could cut
    off every long chat); when the second host says so too, the client gets the 400."""
    async with AsyncExitStack() as stack:
        fakes = [await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL)) for _ in range(3)]
        coordinator = await stack.enter_async_context(inproc.coordinator(tmp_path, **FAILOVER))
        for i, url in enumerate(fakes):
            await stack.enter_async_context(inproc.agent(coordinator, "llamacpp", url, f"ctx-host-{i}"))
            await fault(url, "ctx", count=-1)
        await coordinator.models({MODEL: 3})
        before = sum([(await backend_stats(url))["requests"] for url in fakes])
        with pytest.raises(openai.BadRequestError) as err:
            await coordinator.client().chat.completions.create(model=MODEL,
                                                               messages=[{"role": "user", "content": "long"}])
        assert err.value.code == "context_length_exceeded"
        assert sum([(await backend_stats(url))["requests"] for url in fakes]) == before + 2  # twice, not three times


async def test_one_hosts_context_error_is_tried_elsewhere(pool: dict[str, Any]) -> None:
    await fault(pool["F"], "ctx")
    reply = await pool["pool"].client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "not long"}])
    assert reply.choices[0].message.content == expected("not long")
    await fault(pool["F"], None, count=0)


async def test_client_disconnect_cancels_the_backend_generation(pool: dict[str, Any]) -> None:
    aborted = (await backend_stats(pool["F"]))["aborted"]
    await fault(pool["F"], "slow", delay=0.2)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "w " * 40}], "stream": True}
    async with httpx.AsyncClient(timeout=10) as client, \
            client.stream("POST", pool["url"] + "/v1/chat/completions", json=body) as resp:
        seen = 0
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen >= 3:
                break
    # leaving the with-block closed the connection mid-stream
    for _ in range(100):  # at most 5 s
        if (await backend_stats(pool["F"]))["aborted"] > aborted:
            break
        await asyncio.sleep(0.05)
    assert (await backend_stats(pool["F"]))["aborted"] == aborted + 1
