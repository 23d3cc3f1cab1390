"""Routing, capacity, fairness, ejection and drain, in one event loop (tests/harness/inproc.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from andy_host.coordinator.hosts.health import HealthPolicy, HostHealth
from andy_host.coordinator.pool.scheduler import SCHEDULER
from andy_host.coordinator.store.interface import STORE
from tests.harness import inproc
from tests.harness.inproc import Pool, backend_stats, fault, until
from tests.harness.sse import achat_stream

MODEL = "m:latest"


@asynccontextmanager
async def one_host(tmp: Path, capacity: int, token_delay: float, **config: Any) -> AsyncIterator[tuple[Pool, str]]:
    async with AsyncExitStack() as stack:
        backend = await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL, token_delay=token_delay))
        pool = await stack.enter_async_context(inproc.coordinator(tmp, **config))
        await stack.enter_async_context(inproc.agent(pool, "llamacpp", backend, "only", max_concurrency=capacity))
        await pool.models({MODEL: 1})
        yield pool, backend


async def keys(pool: Pool, *names: str) -> dict[str, dict[str, str]]:
    out = {}
    for name in names:
        key, _ = await pool.app[STORE].create_key(name, 10**6, 10**6)
        out[name] = {"Authorization": f"Bearer {key}"}
    return out


async def test_a_host_never_gets_more_jobs_than_its_capacity(tmp_path: Path) -> None:
    async with one_host(tmp_path, 2, 0.03) as (pool, backend):
        base = (await backend_stats(backend))["requests"]  # the agent's continuation probe at start-up
        results = await asyncio.gather(*(achat_stream(pool.url, MODEL, f"c{i} a b c d e") for i in range(10)))
        assert all(r.outcome == "complete" for r in results)
        stats = await backend_stats(backend)
        assert stats["max_concurrent"] == 2
        assert stats["requests"] == base + 10


async def test_one_client_flooding_cannot_starve_another(tmp_path: Path) -> None:
    async with one_host(tmp_path, 1, 0.03, queue_timeout=30) as (pool, _):
        headers = await keys(pool, "flooder", "single")
        finished: list[str] = []

        async def ask(client: str, i: int) -> None:
            result = await achat_stream(pool.url, MODEL, f"{client} {i} a b c d e f", headers=headers[client])
            assert result.outcome == "complete", result
            finished.append(client)

        flood = [asyncio.create_task(ask("flooder", i)) for i in range(8)]
        await until(lambda: pool.app[SCHEDULER].queued() >= 7, 5, "the flood queued")
        done_before = len(finished)
        await ask("single", 0)
        await asyncio.gather(*flood)
        # only the flooder's job already running when "single" arrived may finish first
        assert finished.index("single") - done_before <= 1, finished


async def test_failing_host_is_ejected_and_let_back_through_one_probe(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        bad = await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL))
        good = await stack.enter_async_context(inproc.fake("ollama", models=MODEL, nothing_loaded=True))
        # ejections of 1 s, then 2 s: each longer than the few requests made meanwhile take
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path, eject_after=2, eject_base=1.0))
        await stack.enter_async_context(inproc.agent(pool, "llamacpp", bad, "bad"))  # model loaded: preferred
        await stack.enter_async_context(inproc.agent(pool, "ollama", good, "good"))
        await pool.models({MODEL: 2})
        await fault(bad, "500", count=-1)
        base = (await backend_stats(bad))["requests"]
        (host,) = (h for h in pool.registry.hosts.values() if h.name == "bad")

        async def back_in_rotation() -> None:  # the ejection's end, as the coordinator counts it
            await until(lambda: host.health.admits(time.monotonic(), 0), 10, "the ejection over")

        async def ask(n: int) -> int:
            assert (await achat_stream(pool.url, MODEL, f"q{n}")).outcome == "complete"
            return (await backend_stats(bad))["requests"] - base

        assert [await ask(1), await ask(2)] == [1, 2]  # two failures: ejected
        assert pool.stats.ejections == 1
        assert [await ask(n) for n in range(3, 6)] == [2, 2, 2]  # out of rotation
        await back_in_rotation()
        assert await ask(6) == 3  # the single probe: fails again, ejected for twice as long
        assert host.health.offences == 2 and host.health.probing
        assert await ask(7) == 3  # still out (2 s this time)
        await fault(bad, None, count=0)
        await back_in_rotation()
        assert [await ask(8), await ask(9)] == [4, 5]  # the probe succeeds: back in rotation
        assert pool.stats.ejections == 2


async def test_speed_is_learned_from_whole_answers(tmp_path: Path) -> None:
    """A non-streamed answer arrives in one piece: the host's speed is its tokens over
    the whole job (the fake takes 10 ms per token, so at most 100 tokens/s), never a
    burst's absurd rate (once 106,000 tokens/s)."""
    async with one_host(tmp_path, 2, 0.01) as (pool, _):
        for i in range(3):
            reply = await pool.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"s{i} a b c d e f"}])
            assert reply.usage is not None and reply.usage.completion_tokens > 5
        (host,) = pool.registry.hosts.values()
        assert host.health.tps is not None and host.health.tps <= 100
        assert host.health.ttft is None  # a whole answer has no first token to time


def test_last_host_is_never_ejected_for_slowness() -> None:
    policy = HealthPolicy(eject_after=2)
    health = HostHealth()
    for _ in range(5):
        assert not health.record_failure(0.0, policy, slow=True, last_host=True)
    assert health.admits(0.0, 0)
    assert health.record_failure(0.0, policy, slow=True, last_host=False) is False
    assert health.record_failure(0.0, policy, slow=True, last_host=False) is True
    assert not health.admits(1.0, 0)


async def test_queue_limits_answer_429_and_503_with_retry_after(tmp_path: Path) -> None:
    async with one_host(tmp_path, 1, 0.2, max_queue=3, max_queue_per_client=2, queue_timeout=1.5) as (pool, _):
        headers = await keys(pool, "a", "b")
        a = [asyncio.create_task(achat_stream(pool.url, MODEL, "a " * 20, headers=headers["a"])) for _ in range(4)]
        # a's four are in: one runs, two wait (its share of the queue), one was refused
        await until(lambda: pool.app[SCHEDULER].queued() == 2 and sum(t.done() for t in a) == 1, 10,
                    "a's requests queued")
        b = [asyncio.create_task(achat_stream(pool.url, MODEL, "b " * 20, headers=headers["b"])) for _ in range(3)]
        results_a, results_b = await asyncio.gather(*a), await asyncio.gather(*b)
    too_many = [r for r in results_a if r.status == 429]
    assert too_many and too_many[0].error["code"] == "rate_limit_exceeded"  # type: ignore[index]
    full = [r for r in results_b if r.status == 503]
    assert full, [r.status for r in results_b]
    for r in too_many + full:
        assert int(r.headers["retry-after"]) >= 1
    # those that waited past queue_timeout got 503 too; nothing hung
    assert all(r.status in (200, 429, 503) for r in results_a + results_b)


async def test_draining_host_finishes_its_job_and_gets_no_new_one(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        slow = await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL, token_delay=0.1))
        other = await stack.enter_async_context(inproc.fake("ollama", models=MODEL, nothing_loaded=True))
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path))
        leaving = await stack.enter_async_context(inproc.agent(pool, "llamacpp", slow, "leaving"))
        await stack.enter_async_context(inproc.agent(pool, "ollama", other, "staying"))
        await pool.models({MODEL: 2})
        content = "drain " + " ".join(f"w{i}" for i in range(15))
        running = asyncio.create_task(achat_stream(pool.url, MODEL, content))
        await until(lambda: any(h.jobs for h in pool.registry.hosts.values() if h.name == "leaving"), 5, "a job")
        leaving.drain.set()  # SIGTERM
        await until(lambda: any(h.status == "draining" for h in pool.registry.hosts.values()), 5, "draining")
        requests_before = (await backend_stats(slow))["requests"]
        second = await achat_stream(pool.url, MODEL, "during drain")
        result = await running
        assert result.outcome == "complete" and result.text == f"pool heard: {content}"
        assert pool.stats.continued == 0  # finished where it ran
        assert second.outcome == "complete"
        assert (await backend_stats(slow))["requests"] == requests_before  # no new job for the draining host
        await asyncio.wait_for(leaving.task, 10)  # and then it stops by itself


async def test_routing_prefers_loaded_model(tmp_path: Path) -> None:
    async with inproc.fake("ollama", models=MODEL, label="loaded") as loaded, \
            inproc.fake("ollama", models=MODEL, label="cold", nothing_loaded=True) as cold, \
            inproc.coordinator(tmp_path) as pool, \
            inproc.agent(pool, "ollama", cold, "cold"), inproc.agent(pool, "ollama", loaded, "loaded"):
        await pool.models({MODEL: 2})
        labels = {(await achat_stream(pool.url, MODEL, f"x{i}")).text.split()[0] for i in range(4)}
    assert labels == {"loaded"}  # sequential requests: the loaded host always has room


