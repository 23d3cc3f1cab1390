"""The Ollama API on the coordinator, with the official ``ollama`` package from PyPI:
to it the pool is one large Ollama server (list, show, ps, chat whole and streamed,
generate, embed, tools, structured output), with the same routing, failover, limits and
keys. Hosts run on the fake backends (Ollama's documented API, llama.cpp's server
API), in-process (tests/harness/inproc.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import ollama
import pytest

from tests.harness import inproc
from tests.harness.inproc import Pool

ANDY = "sweaterdog/andy-4:latest"


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        backend = await enter(inproc.fake("ollama", models=f"{ANDY},nomic-embed-text:latest",
                                          embed_only="nomic-embed-text", label="ollama"))
        llama = await enter(inproc.fake("llamacpp", model=ANDY, label="llama"))
        pool = await enter(inproc.coordinator(tmp_path, anon_per_minute=3))
        await enter(inproc.agent(pool, "ollama", backend, "host-ollama"))
        await enter(inproc.agent(pool, "llamacpp", llama, "host-llama"))
        await pool.models({ANDY: 2, "nomic-embed-text:latest": 1})
        pool.fakes = {"ollama": backend, "llama": llama}  # type: ignore[attr-defined]
        yield pool


def client(pool: Pool, key: str | None = "") -> ollama.AsyncClient:
    headers = {"Authorization": f"Bearer {key if key is not None else pool.key}"} if key != "" else {}
    return ollama.AsyncClient(host=pool.url, headers=headers or None)


async def test_list_show_ps_and_version(pool: Pool) -> None:
    keyed = client(pool, None)
    listed = await keyed.list()
    assert sorted(m.model or "" for m in listed.models) == sorted([ANDY, "nomic-embed-text:latest"])
    andy = next(m for m in listed.models if m.model == ANDY)
    assert andy.details is not None and andy.details.quantization_level == "Q4_K_M" and andy.size
    shown = await keyed.show("andy-4")
    assert shown.capabilities is not None and "completion" in shown.capabilities and "tools" in shown.capabilities
    running = await keyed.ps()
    assert ANDY in [m.model for m in running.models]
    async with pool.http() as http:
        assert (await http.get("/api/version")).json() == {"version": "0.12.11"}


async def test_model_listing_needs_a_key_like_v1_models(pool: Pool) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client(pool).list()
    assert caught.value.status_code == 401 and "API key" in caught.value.error


async def test_chat_whole_and_streamed_without_a_key(pool: Pool) -> None:
    anonymous = client(pool)
    messages = [{"role": "user", "content": "hello from ollama"}]
    whole = await anonymous.chat(model="andy-4", messages=messages)
    assert whole.message.role == "assistant" and whole.message.content.endswith("heard: hello from ollama")
    assert whole.done and whole.done_reason == "stop"
    assert whole.eval_count == 5 and (whole.total_duration or 0) > 0 and whole.prompt_eval_count
    parts = [part async for part in await anonymous.chat(model=ANDY, messages=messages, stream=True)]
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "stop"
    assert "".join(p.message.content or "" for p in parts).endswith("heard: hello from ollama")
    assert (parts[-1].eval_duration or 0) >= 0 and (parts[-1].total_duration or 0) >= (parts[-1].eval_duration or 0)


async def test_anonymous_chat_is_rate_limited(pool: Pool) -> None:
    anonymous = client(pool)
    for _ in range(3):
        await anonymous.chat(model=ANDY, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(ollama.ResponseError) as caught:
        await anonymous.chat(model=ANDY, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 429
    keyed = await client(pool, None).chat(model=ANDY, messages=[{"role": "user", "content": "x"}])
    assert keyed.done


async def test_generate_templated_and_raw(pool: Pool) -> None:
    keyed = client(pool, None)
    templated = await keyed.generate(model=ANDY, prompt="Why is the sky blue?")
    assert templated.response.endswith("heard: Why is the sky blue?") and templated.done
    raw = await keyed.generate(model=ANDY, prompt="The capital of France is", raw=True)
    assert raw.response.endswith("continued after 'of France is'.")
    streamed = [p async for p in await keyed.generate(model=ANDY, prompt="Why is the sky blue?", stream=True)]
    assert "".join(p.response for p in streamed) == templated.response and streamed[-1].done
    loaded = await keyed.generate(model=ANDY)  # no prompt: Ollama's "load the model"
    assert loaded.done and loaded.done_reason == "load"


async def test_embed(pool: Pool) -> None:
    keyed = client(pool, None)
    result = await keyed.embed(model="nomic-embed-text", input=["one text", "another text"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 8
    assert result.embeddings[0] != result.embeddings[1]
    single = await keyed.embeddings(model="nomic-embed-text", prompt="one text")  # the older endpoint
    assert list(single.embedding) == list(result.embeddings[0])


async def test_tools_and_structured_output(pool: Pool) -> None:
    keyed = client(pool, None)
    weather = {"type": "function", "function": {"name": "get_weather", "description": "weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    for _ in range(2):  # on either host
        reply = await keyed.chat(model=ANDY, messages=[{"role": "user", "content": "use a tool for Paris"}],
                                 tools=[weather])
        calls = reply.message.tool_calls or []
        assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    shaped = await keyed.chat(model=ANDY, messages=[{"role": "user", "content": "which city? Rome"}], format=schema)
    assert json.loads(shaped.message.content or "") == {"city": "Rome"}


async def test_errors_are_ollamas_shape(pool: Pool) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client(pool).chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404 and caught.value.error == "model 'no-such-model' not found"
    async with pool.http() as http:
        reply = await http.post("/api/chat", json={"model": ANDY, "messages": "hi"})
        assert reply.status_code == 400 and set(reply.json()) == {"error"}
        images = await http.post("/api/chat", json={"model": ANDY, "messages": [
            {"role": "user", "content": "x", "images": ["aGk="]}]})
        assert images.status_code == 400 and "images" in images.json()["error"]


async def test_a_stream_cut_after_content_ends_with_an_error_line(pool: Pool) -> None:
    async with httpx.AsyncClient() as http:
        for fake in ("ollama", "llama"):
            await http.post(pool.fakes[fake] + "/_fault", json={"mode": "cut", "count": -1})  # type: ignore[attr-defined]
    # logprobs make the answer one that cannot be continued elsewhere
    stream = await client(pool, None).chat(model=ANDY, stream=True, logprobs=True, messages=[
        {"role": "user", "content": "a long answer please with many words in it"}])
    got = []
    with pytest.raises(ollama.ResponseError, match="no other host could continue"):
        async for part in stream:
            got.append(part)
    assert got and not any(p.done for p in got)
