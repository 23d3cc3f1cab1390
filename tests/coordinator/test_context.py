"""The context hosts serve, on the coordinator: reported where clients look for it
(``/api/show``, ``/v1/models/{id}``), routing that keeps a long prompt off hosts that
cannot hold it, an impossible prompt refused at once without reaching any host, and a
backend's own overflow told with its counts, in the coordinator's words. Hosts run on
the fake backends in-process (tests/harness/inproc.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.pool.scheduler import Scheduler, supports
from andy_host.coordinator.pool.work import CONTEXT_NEED, chat_work, context_floor, needed_context
from andy_host.coordinator.replication.directory import Offer, Peer, rank
from andy_host.coordinator.store.interface import STORE
from andy_host.errors import APIError, context_exceeded
from andy_host.protocol import ChatRequest, Message, ModelInfo
from tests.harness import evil, inproc
from tests.harness.inproc import Pool, backend_stats

MODEL = "m:latest"
WORD = "abcdefghijklmnopqrstuvwxyzabcdef "  # 33 characters, one token to the fakes


def message(error: openai.APIStatusError) -> str:
    body: Any = error.body
    return str(body["message"])


def long_prompt(tokens_at_least: int) -> str:
    """A prompt the coordinator knows is at least ``tokens_at_least`` tokens (32
    characters a token at most) while the fakes count one token a word."""
    return WORD * (tokens_at_least * 32 // len(WORD) + 1)


@asynccontextmanager
async def hosts(tmp_path: Path, *contexts: int, kind: str = "llamacpp",
                **overrides: Any) -> AsyncIterator[tuple[Pool, list[str]]]:
    """A coordinator and one host per context (a slot's context of its llama-server)."""
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        if kind == "llamacpp":
            fakes = [await enter(inproc.fake("llamacpp", model=MODEL, ctx_size=c, n_ctx_train=65536)) for c in contexts]
        else:
            fakes = [await enter(inproc.fake("ollama", models=MODEL, num_ctx=c)) for c in contexts]
        pool = await enter(inproc.coordinator(tmp_path, **overrides))
        for i, url in enumerate(fakes):
            await enter(inproc.agent(pool, kind, url, f"ctx-{i}"))
        await pool.models({MODEL: len(fakes)})
        await inproc.until(lambda: all(h.models[MODEL].served_context for h in pool.registry.hosts.values()),
                           what="served contexts known")
        yield pool, fakes


async def reported(pool: Pool) -> tuple[Any, Any, Any]:
    async with pool.http() as http:
        auth = {"Authorization": f"Bearer {pool.key}"}
        shown = (await http.post("/api/show", json={"model": MODEL}, headers=auth)).json()
        model = (await http.get(f"/api/andy/v1/models/{MODEL}", headers=auth)).json()
        listed = (await http.get("/api/andy/models")).json()["models"]
    arch = shown["model_info"]["general.architecture"]
    return shown["model_info"][f"{arch}.context_length"], model["max_model_len"], listed[0]["max_model_len"]


async def test_api_show_and_v1_models_report_the_served_context(tmp_path: Path) -> None:
    async with hosts(tmp_path, 4096) as (pool, _):
        assert await reported(pool) == (4096, 4096, 4096)  # not the model's trained 65536
    async with hosts(tmp_path, 2048, 16384) as (pool, _):
        assert await reported(pool) == (16384, 16384, 16384)  # the largest: a prompt up to it can be routed


async def test_ollama_hosts_report_the_context_they_loaded_the_model_with(tmp_path: Path) -> None:
    async with hosts(tmp_path, 6144, kind="ollama") as (pool, _):
        assert await reported(pool) == (6144, 6144, 6144)
        async with pool.http() as http:
            ps = (await http.get("/api/ps", headers={"Authorization": f"Bearer {pool.key}"})).json()
        assert ps["models"][0]["context_length"] == 6144


async def test_a_long_prompt_goes_only_to_the_host_that_can_hold_it(tmp_path: Path) -> None:
    async with hosts(tmp_path, 2048, 16384) as (pool, (small, big)):
        prompt = long_prompt(3000)  # over 2048 tokens whatever the tokenizer; about 2,900 words to the fakes
        client = pool.client()
        before = [(await backend_stats(url))["requests"] for url in (small, big)]  # the agents' own probes
        for _ in range(4):  # the small host would get about half of them if it could take them
            reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                         max_tokens=4)
            assert reply.choices[0].message.content
        assert (await backend_stats(small))["requests"] == before[0]
        assert (await backend_stats(big))["requests"] == before[1] + 4
        short = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert short.choices[0].message.content  # short prompts still go to either


async def test_a_prompt_no_host_can_hold_is_refused_at_once(tmp_path: Path) -> None:
    """With a long queue_timeout: the request ends now, it does not wait for a bigger host."""
    async with hosts(tmp_path, 2048, queue_timeout=600, request_timeout=900) as (pool, (small,)):
        prompt = long_prompt(6000)
        before = (await backend_stats(small))["requests"]  # the agent's own probe
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as err:
                await pool.client().chat.completions.create(
                    model=MODEL, messages=[{"role": "system", "content": prompt}, {"role": "user", "content": "go"}],
                    stream=stream)
            assert err.value.code == "context_length_exceeded"
            body: Any = err.value.body
            assert body["param"] == "messages" and body["type"] == "invalid_request_error"
            assert body["message"].startswith("This model's context is 2048 tokens per request on the hosts "
                                              "serving it; your prompt is at least 6000 tokens")
        assert (await backend_stats(small))["requests"] == before  # the job never reached the host
        async with pool.http() as http:  # the Ollama API says the same, in its shape
            answer = await http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user",
                                                                                      "content": prompt}]})
        assert answer.status_code == 400 and "context is 2048 tokens" in answer.json()["error"]


async def test_a_backends_overflow_reaches_the_client_with_its_counts(tmp_path: Path) -> None:
    """The estimate lets it through (it could fit); llama-server counts 3004 tokens and
    says so; the client reads the coordinator's sentence with both numbers."""
    async with hosts(tmp_path, 2048, queue_timeout=600) as (pool, (small,)):
        with pytest.raises(openai.BadRequestError) as err:
            await pool.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "w " * 3000}])
        assert err.value.code == "context_length_exceeded"
        assert message(err.value) == ("This model's context is 2048 tokens per request on the hosts serving it; "
                                     "your prompt is 3004 tokens. Shorten the messages.")
        assert (await backend_stats(small))["requests"] >= 2  # its probe, and the job


async def test_an_overflow_moves_the_prompt_to_a_host_with_room_and_costs_no_strike(tmp_path: Path) -> None:
    """"w " * 3000 passes the estimate for every host (it could be 187 tokens); two small
    hosts may each say it does not fit (3004 tokens), and the job then goes only to a
    host that serves more than the backend counted: it is answered, and no honest small
    host is struck for its overflow."""
    async with hosts(tmp_path, 2048, 2048, 16384, queue_timeout=600) as (pool, urls):
        prompt = "w " * 3000
        for _ in range(6):  # the small hosts are tried first on some of them
            reply = await pool.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=4)
            assert reply.choices[0].message.content
        jobs = [(await backend_stats(url))["requests"] for url in urls]
        assert jobs[2] >= 6  # every one of them was answered by the big host
        assert pool.stats.strikes == 0
        assert all(h.trust.strikes == 0 for h in pool.registry.hosts.values())


async def test_an_ollama_overflow_says_the_context_it_serves(tmp_path: Path) -> None:
    async with hosts(tmp_path, 2048, kind="ollama", queue_timeout=600) as (pool, _):
        with pytest.raises(openai.BadRequestError) as err:
            await pool.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "w " * 3000}])
        assert err.value.code == "context_length_exceeded"
        assert message(err.value).startswith("This model's context is 2048 tokens per request")


async def test_a_host_whose_context_is_not_known_may_take_any_prompt(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(inproc.fake("ollama", models=MODEL, nothing_loaded=True))
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path))
        await stack.enter_async_context(inproc.agent(pool, "ollama", url, "unknown-ctx"))
        await pool.models({MODEL: 1})
        assert pool.registry.served_context(MODEL) is None
        before = (await backend_stats(url))["requests"]
        with pytest.raises(openai.BadRequestError) as err:  # the backend's own answer: it does not fit
            await pool.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": long_prompt(6000)}])
        assert err.value.code == "context_length_exceeded"
        assert (await backend_stats(url))["requests"] == before + 1  # tried, not refused on a guess
        async with httpx.AsyncClient(base_url=pool.url) as http:
            model = (await http.get(f"/v1/models/{MODEL}", headers={"Authorization": f"Bearer {pool.key}"})).json()
        assert "max_model_len" not in model


async def test_one_hosts_count_cannot_keep_a_prompt_from_every_host_that_holds_it(tmp_path: Path) -> None:
    """A hostile host (tests/harness/evil.py, its context not said) rejects every job as too long
    for its context, counting the prompt at 2**31-1 tokens. Believed alone, the count
    (bounded at 4 tokens a character, 16,096 for this prompt) would keep the prompt off
    the honest 8192-token host that holds it (1,500 tokens to the fake), and the client
    would get a 400 and the liar no strike. One host's count is only a hint: the honest
    host answers, and the liar is struck for the rejection."""
    async def liar(host: evil.RawHost, job: dict[str, Any]) -> None:
        await host.send({"type": "error", "id": job["id"], "status": 400, "code": "context_length_exceeded",
                         "message": "the request exceeds the available context size", "prompt_tokens": 2**31 - 1,
                         "context_tokens": 4096})

    async with hosts(tmp_path, 8192) as (pool, _):
        raw = await evil.join(pool.url, evil.hello("liar", [{"name": MODEL, "loaded": True}]))
        task = asyncio.get_running_loop().create_task(raw.serve(liar))
        try:
            await pool.models({MODEL: 2})
            prompt = "w " * 1500  # at least 93 tokens, 1,500 to the fake; over 8192 at 4 tokens a character
            for _ in range(6):  # hosts take turns: the liar gets some of them first
                reply = await pool.client().chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=4)
                assert reply.choices[0].message.content
                if raw.jobs:
                    break
            assert raw.jobs, "the liar was never tried"
            liar_host = next(h for h in pool.registry.hosts.values() if h.name == "liar")
            assert liar_host.trust.strikes >= 1
        finally:
            await raw.ws.close()
            task.cancel()


async def test_a_lone_hosts_count_reaches_the_client_only_as_far_as_it_is_plausible(tmp_path: Path) -> None:
    async def liar(host: evil.RawHost, job: dict[str, Any]) -> None:
        await host.send({"type": "error", "id": job["id"], "status": 400, "code": "context_length_exceeded",
                         "message": "the request exceeds the available context size", "prompt_tokens": 2**31 - 1,
                         "context_tokens": 4096})

    async with inproc.coordinator(tmp_path) as pool:
        raw = await evil.join(pool.url, evil.hello("liar", [{"name": MODEL, "loaded": True}]))
        task = asyncio.get_running_loop().create_task(raw.serve(liar))
        try:
            await pool.models({MODEL: 1})
            with pytest.raises(openai.BadRequestError) as err:
                await pool.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            assert err.value.code == "context_length_exceeded"
            assert message(err.value) == ("This model's context is 4096 tokens per request on the hosts serving it; "
                                         "your prompt is 4104 tokens. Shorten the messages.")  # 4 a character + 4096
        finally:
            await raw.ws.close()
            task.cancel()


async def test_two_hosts_counts_decide_only_as_far_as_both_go(tmp_path: Path) -> None:
    """A liar's huge count, then an honest small host's true one: the prompt goes on to
    the big host that holds what the honest count says, not refused for the lie."""
    async def liar(host: evil.RawHost, job: dict[str, Any]) -> None:
        await host.send({"type": "error", "id": job["id"], "status": 400, "code": "context_length_exceeded",
                         "message": "the request exceeds the available context size", "prompt_tokens": 2**31 - 1,
                         "context_tokens": 4096})

    async with hosts(tmp_path, 2048, 16384) as (pool, _):
        raw = await evil.join(pool.url, evil.hello("liar", [{"name": MODEL, "loaded": True, "served_context": 1024}]))
        task = asyncio.get_running_loop().create_task(raw.serve(liar))
        try:
            await pool.models({MODEL: 3})
            prompt = "w " * 3000  # at least 187 tokens, 3,004 to the fakes: fits 16384 only; 4*6000+4096 = 28096
            for _ in range(6):
                reply = await pool.client().chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=4)
                assert reply.choices[0].message.content
        finally:
            await raw.ws.close()
            task.cancel()


async def test_a_strangers_claimed_context_is_not_what_clients_are_told(tmp_path: Path) -> None:
    """A raw host (tests/harness/evil.py) claims to serve 2**31-1 tokens of the model a trusted
    host serves with 4096. Clients size their prompts by what /api/show and /v1/models
    say: told the stranger's number, they would send prompts only the stranger takes.
    Where hosts with standing (trusted, or past answer checks) serve the model, theirs
    is what is reported."""
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL, ctx_size=4096, n_ctx_train=65536))
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path))
        token, _ = await pool.app[STORE].create_token("mine", trusted=True)
        await stack.enter_async_context(inproc.agent(pool, "llamacpp", url, "trusted-host", token=token))
        raw = await evil.join(pool.url, evil.hello("stranger", [{"name": MODEL, "loaded": True,
                                                                   "served_context": 2**31 - 1}]))
        try:
            await pool.models({MODEL: 2})
            await inproc.until(lambda: all(h.models[MODEL].served_context for h in pool.registry.hosts.values()),
                               what="served contexts known")
            assert await reported(pool) == (4096, 4096, 4096)
        finally:
            await raw.ws.close()


# --- the pure parts ---------------------------------------------------------------------------


def host(conn: int, served: int | None) -> Host:
    async def nothing(*_: Any) -> None:
        return None

    info = ModelInfo(name=MODEL, served_context=served, context_length=131072)
    return Host(id=f"h{conn}", name=f"h{conn}", backend="llamacpp", capacity=2, send=nothing, close=nothing,
                conn=conn, models={MODEL: info})


def test_the_need_is_a_lower_bound_from_characters() -> None:
    assert context_floor(31) == 0 and context_floor(32) == 1 and context_floor(320_000) == 10_000
    work = chat_work(MODEL, ChatRequest(messages=[Message(role="system", content="x" * 64_000),
                                                  Message(role="user", content="y" * 1_000)]))
    assert needed_context(work.needs) == 65_000 // 32 and f"{CONTEXT_NEED}2031" in work.needs
    assert needed_context(chat_work(MODEL, ChatRequest(messages=[Message(role="user", content="hi")])).needs) == 0


def test_routing_filters_only_hosts_known_to_be_too_small() -> None:
    needs = frozenset({f"{CONTEXT_NEED}3000"})
    assert not supports(host(1, 2048), MODEL, needs)
    assert supports(host(2, 4096), MODEL, needs) and supports(host(3, None), MODEL, needs)
    assert supports(host(1, 2048), MODEL, frozenset())


async def test_the_scheduler_says_too_long_rather_than_no_hosts() -> None:
    registry = Registry()
    for conn, served in ((1, 2048), (2, 1024)):
        registry.add(host(conn, served))
    scheduler = Scheduler(registry, CoordinatorConfig(queue_timeout=600))
    with pytest.raises(APIError) as err:
        await scheduler.acquire(MODEL, set(), 600, needs=frozenset({f"{CONTEXT_NEED}3000"}))
    assert (err.value.status, err.value.code) == (400, "context_length_exceeded")
    assert "context is 2048 tokens" in err.value.message and "at least 3000 tokens" in err.value.message
    assert registry.served_context(MODEL) == 2048
    assigned = await scheduler.acquire(MODEL, set(), 1, needs=frozenset({f"{CONTEXT_NEED}2000"}))
    assert assigned.host.id == "h1"


def test_replicas_are_ranked_without_the_prompts_need() -> None:
    offer = Offer(hosts=1, capacity=2, free=1, tps=1.0, loaded=True, trusted=False, features=frozenset())
    peer = Peer(id="r2", url="http://r2", models={MODEL: offer})
    assert rank([peer], MODEL, "chat", frozenset({f"{CONTEXT_NEED}5000"}), False, set()) == [peer]


def test_the_message_has_the_counts_it_knows() -> None:
    assert context_exceeded(8192, 9001).message == (
        "This model's context is 8192 tokens per request on the hosts serving it; your prompt is 9001 tokens. "
        "Shorten the messages.")
    assert context_exceeded().message == ("The prompt does not fit in the model's context on the hosts serving it. "
                                          "Shorten the messages.")
    assert context_exceeded(2048, 3000, estimated=True).param == "messages"
