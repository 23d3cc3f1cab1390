"""Failover in one event loop (tests/harness/inproc.py): every fault a backend can show, before
the first token and mid-stream, streamed and not; the client sees a complete answer
or an explicit error event, never a truncated success. Each test has a pool of its
own, so no host's health carries over from another test."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import inproc
from tests.harness.evil import RawHost, join
from tests.harness.fakes.common import TOKENS
from tests.harness.inproc import backend_stats, fault
from tests.harness.sse import achat_stream

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
    host_f = next(h for h in pool["pool"].registry.hosts.values() if h.name == "host-F")
    # the cool-down ends (the coordinator's own account of F); then F takes jobs again
    await inproc.until(lambda: host_f.health.admits(time.monotonic(), 0), 10, "F's cool-down over")
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


# --- a rescued answer is the answer an uninterrupted host gives ----------------------------

# Tokens of 8 characters (" word123"): the coordinator's estimate from characters (one
# token per 4) says twice as many tokens were generated as there were.
LONG = " ".join(f"word{i:03d}" for i in range(400))
CUT_AFTER = 50


async def streamed_answer(pool: inproc.Pool, max_tokens: int = 300,
                          seen: list[str] | None = None) -> tuple[str, str | None, int | None]:
    """Text, finish reason and completion tokens of a streamed answer to LONG (an error
    event raises); ``seen`` gets the text as it arrives."""
    seen = [] if seen is None else seen
    stream = await pool.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True})
    finish, completion = None, None
    async for chunk in stream:
        for choice in chunk.choices:
            seen.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            completion = chunk.usage.completion_tokens
    return "".join(seen), finish, completion


@pytest.mark.parametrize("how", ["frozen", "backend_killed", "host_disconnects"])
async def test_rescued_stream_has_every_token_an_uninterrupted_one_has(tmp_path: Path, how: str) -> None:
    """max_tokens 300, the host fails after 50 tokens: the continuation is asked for the
    250 the first host did not generate (its own count), not for 300 less an estimate
    from characters (which gave 250 tokens here, 277 in the issue's report)."""
    config = {**FAILOVER, "token_timeout": 1.0 if how == "frozen" else 30.0}
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL, token_delay=0.001))
                for _ in range(2)]
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path, **config))
        agents = {f"rescue-{i}": await stack.enter_async_context(inproc.agent(pool, "llamacpp", url, f"rescue-{i}"))
                  for i, url in enumerate(urls)}
        await pool.models({MODEL: 2})
        reference = await asyncio.wait_for(streamed_answer(pool), 20)
        text, finish, completion = reference
        assert len(TOKENS.findall(text)) == 300 and finish == "length" and completion == 300

        mode = "cut" if how == "backend_killed" else "stall"
        for url in urls:  # whichever host starts the answer fails; the other continues it
            await fault(url, mode, count=-1, fresh_only=True, after=CUT_AFTER)
        before = stats({"pool": pool})
        seen: list[str] = []
        answer = asyncio.create_task(asyncio.wait_for(streamed_answer(pool, seen=seen), 20))
        if how == "host_disconnects":  # the first host sent its 50 tokens, then leaves the pool
            await inproc.until(lambda: len(TOKENS.findall("".join(seen))) >= CUT_AFTER, 10, "50 tokens")
            (busy,) = [h for h in pool.registry.hosts.values() if h.jobs]
            agents[busy.name].stop.set()
        rescued = await answer
        assert len(TOKENS.findall(rescued[0])) == 300, f"{len(TOKENS.findall(rescued[0]))} tokens rescued, not 300"
        assert rescued == reference  # the same text, as many tokens, the same end and usage
        after = stats({"pool": pool})
        assert after["continued"] == before["continued"] + 1 and after["rescued"] == before["rescued"] + 1
        assert sum([(await backend_stats(url))["faults"] for url in urls]) == 1


# --- a failover waits only for a host that is there ------------------------------------------

# Huge: a request that waited for another host to connect would run into the test's own
# bound (asyncio.wait_for, 20 s) instead of ending with its error.
ALONE = {**FAILOVER, "queue_timeout": 600.0, "ttft_timeout": 0.5, "token_timeout": 0.5, "answer_timeout": 0.5}
PROMPTLY = 20


@pytest.fixture
async def lone(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """One llama.cpp host, and nobody else."""
    async with inproc.fake("llamacpp", model=MODEL, token_delay=0.01) as url, \
            inproc.coordinator(tmp_path, **ALONE) as pool, inproc.agent(pool, "llamacpp", url, "lone"):
        await pool.models({MODEL: 1})
        yield {"pool": pool, "url": pool.url, "F": url}


async def ask(pool: dict[str, Any], stream: bool, content: str) -> tuple[int, dict[str, Any] | None, str]:
    """(HTTP status, error, outcome) of one request, within PROMPTLY seconds."""
    if stream:
        result = await asyncio.wait_for(achat_stream(pool["url"], MODEL, content), PROMPTLY)
        return result.status, result.error, result.outcome
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    async with httpx.AsyncClient(timeout=PROMPTLY) as client:
        reply = await asyncio.wait_for(client.post(pool["url"] + "/v1/chat/completions", json=body), PROMPTLY)
    error = reply.json().get("error") if reply.status_code != 200 else None
    return reply.status_code, error, "http_error" if error else "complete"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_lone_hosts_context_error_reaches_the_client_at_once(lone: dict[str, Any], stream: bool) -> None:
    """With no other host to ask, the rejection is the answer: 400
    context_length_exceeded now, not after queue_timeout, and no strike."""
    await fault(lone["F"], "ctx", count=-1, n_ctx=2048)
    requests = (await backend_stats(lone["F"]))["requests"]
    status, error, _ = await ask(lone, stream, "a history too long for this host")
    assert status == 400 and error is not None and error["code"] == "context_length_exceeded", error
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert (await backend_stats(lone["F"]))["requests"] == requests + 1  # asked once
    (host,) = lone["pool"].registry.hosts.values()
    assert host.trust.strikes == 0 and lone["pool"].stats.failovers == 1


@pytest.mark.parametrize(("mode", "stream", "expected_status", "code"), [
    ("hang", True, 504, "timeout"),  # silent before the first token
    ("hang", False, 504, "timeout"),
    ("stall", True, 200, "stream_interrupted"),  # silent after content: the explicit error event
    ("stall", False, 504, "timeout"),  # a whole answer that never comes
], ids=["silent-streamed", "silent-whole", "stalls-mid-stream", "stalls-whole"])
async def test_a_lone_host_that_stalls_ends_the_request_with_its_error(
        lone: dict[str, Any], mode: str, stream: bool, expected_status: int, code: str) -> None:
    await fault(lone["F"], mode, count=-1, after=3)
    status, error, outcome = await ask(lone, stream, "stall one two three four five six seven")
    assert status == expected_status and error is not None and error["code"] == code, (status, error)
    assert outcome == ("error_event" if expected_status == 200 else "http_error")  # never a truncated success


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_lone_host_sending_only_empty_chunks_ends_the_request(tmp_path: Path, stream: bool) -> None:
    async def empties(host: RawHost, job: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await host.chunk(job["id"], "")
                await asyncio.sleep(0.05)

    async with inproc.coordinator(tmp_path, **ALONE) as pool:
        host = await join(pool.url)
        serving = asyncio.create_task(host.serve(empties))
        try:
            await pool.models({MODEL: 1})
            status, error, outcome = await ask({"url": pool.url}, stream, "are you there")
            assert host.jobs, "the raw host was never given the job"
            assert status == 504 and error is not None and error["code"] == "timeout", (status, error)
            assert outcome == "http_error"
        finally:
            await host.ws.close()
            serving.cancel()


async def test_a_failover_waits_for_a_busy_host_that_is_there(tmp_path: Path) -> None:
    """Another host could take the job but is busy: the failover waits in the queue for it."""
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL)) for _ in range(2)]
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path, **ALONE))
        for i, url in enumerate(urls):
            await stack.enter_async_context(inproc.agent(pool, "llamacpp", url, f"one-slot-{i}", max_concurrency=1))
        await pool.models({MODEL: 2})
        for url in urls:  # the first request is slow on whichever host takes it
            await fault(url, "slow", delay=0.05)
        slow = asyncio.create_task(achat_stream(pool.url, MODEL, "slow " + " ".join(f"s{i}" for i in range(20))))
        await inproc.until(lambda: sum(len(h.jobs) for h in pool.registry.hosts.values()) == 1, 5, "a busy host")
        (busy,) = [h for h in pool.registry.hosts.values() if h.jobs]
        free_url = urls[1 - int(busy.name[-1])]
        await fault(free_url, "500")  # the free host fails the next request; the busy one is still there
        result = await asyncio.wait_for(achat_stream(pool.url, MODEL, "then me"), PROMPTLY)
        assert result.outcome == "complete" and result.text == expected("then me"), result
        assert (await slow).outcome == "complete"
        assert busy.served == 2 and pool.stats.rescued == 1
