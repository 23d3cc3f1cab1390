"""The pool's spine in one event loop (tests/harness/inproc.py): a coordinator, two host agents
and faked backends (Ollama's documented API; llama.cpp's server API) as tasks; clients
are the official ``openai`` package (its async client) and plain HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import openai
import pytest
import structlog

from tests.harness import inproc
from tests.harness.inproc import Pool

ANDY = "sweaterdog/andy-4:latest"


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    async with AsyncExitStack() as stack:
        ollama = await stack.enter_async_context(inproc.fake(
            "ollama", models=f"{ANDY},llama3.2:latest,broken:latest,nomic-embed-text:latest",
            embed_only="nomic-embed-text", failing="broken", label="ollama"))
        llama = await stack.enter_async_context(inproc.fake("llamacpp", model=ANDY, label="llamacpp"))
        coordinator = await stack.enter_async_context(inproc.coordinator(tmp_path))
        await stack.enter_async_context(inproc.agent(coordinator, "ollama", ollama, "host-ollama"))
        await stack.enter_async_context(inproc.agent(coordinator, "llamacpp", llama, "host-llama"))
        await coordinator.models({ANDY: 2, "llama3.2:latest": 1})
        yield coordinator


async def post(pool: Pool, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    async with pool.http() as client:
        reply = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        return reply.status_code, reply.json()


async def test_chat_non_streaming(pool: Pool) -> None:
    reply = await pool.client().chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hello pool"}], temperature=0.2, seed=7
    )
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "llama3.2:latest"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "ollama heard: hello pool"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_chat_streaming_with_usage(pool: Pool) -> None:
    stream = await pool.client().chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ollama heard: stream me"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_streaming_wire_format_ends_with_done(pool: Pool) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "raw"}], "stream": True}
    async with pool.http() as client:
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = resp.text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all("usage" not in p for p in payloads)  # only with include_usage
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stop_string_and_max_tokens(pool: Pool) -> None:
    client = pool.client()
    # Mindcraft sends stop as a single string
    reply = await client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "one two three"}], stop="two"
    )
    assert reply.choices[0].message.content == "ollama heard: one "
    reply = await client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "one two three"}], stop=["three", "zzz"]
    )
    assert reply.choices[0].message.content == "ollama heard: one two "
    reply = await client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "a b c d e f"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "ollama heard: a"


async def test_content_parts_and_unknown_fields(pool: Pool) -> None:
    status, body = await post(
        pool, "/api/andy/v1/chat/completions",
        json.dumps({
            "model": "llama3.2",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "part one "}, {"type": "text", "text": "part two"}]},
            ],
            "frequency_penalty": 0.5, "logit_bias": {}, "user": "bot-7", "n": 1, "some_future_field": [1, 2],
        }).encode(),
    )
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "ollama heard: part one part two"  # type: ignore[index]


async def test_model_listings(pool: Pool) -> None:
    listed = await pool.client().models.list()
    ids = [m.id for m in listed.data]
    assert ids.count(ANDY) == 1  # served by two hosts, listed once
    assert {ANDY, "llama3.2:latest", "nomic-embed-text:latest", "broken:latest"} <= set(ids)
    async with pool.http() as client:
        andy = {m["name"]: m["hosts"] for m in (await client.get("/api/andy/models")).json()["models"]}
    assert andy[ANDY] == 2 and andy["llama3.2:latest"] == 1


async def test_short_name_alias(pool: Pool) -> None:
    reply = await pool.client().chat.completions.create(model="andy-4", messages=[{"role": "user", "content": "hi"}])
    assert reply.model == ANDY
    assert reply.choices[0].message.content.endswith("heard: hi")


async def test_requests_spread_over_both_hosts(pool: Pool) -> None:
    async def ask(i: int) -> str:
        reply = await pool.client().chat.completions.create(model=ANDY, messages=[{"role": "user", "content": f"n{i}"}])
        return str(reply.choices[0].message.content).split()[0]

    labels = set(await asyncio.gather(*(ask(i) for i in range(8))))
    assert labels == {"ollama", "llamacpp"}


async def test_error_malformed_json(pool: Pool) -> None:
    status, body = await post(pool, "/api/andy/v1/chat/completions", b'{"model": "llama3.2", "messages": [')
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "not valid JSON" in body["error"]["message"]  # type: ignore[index]


async def test_error_missing_messages_and_bad_types(pool: Pool) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await pool.client().chat.completions.create(model="llama3.2", messages=[])
    assert err.value.status_code == 400
    assert err.value.body["param"] == "messages"  # type: ignore[index]
    status, body = await post(
        pool, "/v1/chat/completions",
        json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(),
    )
    assert status == 400 and body["error"]["param"] == "temperature"  # type: ignore[index]


async def test_error_unknown_model(pool: Pool) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await pool.client().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


async def test_error_backend_failure_is_502_in_the_coordinators_words(pool: Pool) -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(openai.APIStatusError) as err:
        await pool.client().chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    assert "backend failed (HTTP 500)" in err.value.message
    assert "CUDA" not in err.value.message  # a host's own text never reaches a client...
    logged = next(e for e in logs if e["event"] == "job.host_error")
    assert "CUDA error: out of memory" in logged["message"] and logged["host_id"]  # ...it goes to the log


async def test_error_oversized_body(pool: Pool) -> None:
    huge = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]})
    status, body = await post(pool, "/v1/chat/completions", huge.encode())
    assert status == 413
    assert body["error"]["message"]  # type: ignore[index]


async def test_embeddings(pool: Pool) -> None:
    result = await pool.client().embeddings.create(model="nomic-embed-text", input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding
    again = await pool.client().embeddings.create(model="nomic-embed-text", input="alpha")
    assert again.data[0].embedding == result.data[0].embedding


async def test_model_that_cannot_embed_gets_a_clear_400(tmp_path: Path) -> None:
    async with inproc.fake("llamacpp", model="chat-only:latest", embeddings=False) as backend, \
            inproc.coordinator(tmp_path) as coordinator, \
            inproc.agent(coordinator, "llamacpp", backend, "chat-only-host"):
        await coordinator.models({"chat-only:latest": 1})
        with pytest.raises(openai.BadRequestError) as err:
            await coordinator.client().embeddings.create(model="chat-only", input="x")
    assert "cannot create embeddings" in err.value.message
