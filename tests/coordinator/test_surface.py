"""Every client's language (issue 16): OpenAI tools, structured output, log
probabilities, ``n``, text completions, model lookup, request ids, CORS and honest
404s, with the official ``openai`` package against the in-process pool
(tests/harness/inproc.py). Hosts run on the fake backends, which follow llama.cpp's server
API (with ``--jinja``: tools, grammars, logprobs) and Ollama's documented API (tools,
``format``, logprobs since 0.12.11; no ``tool_choice``); neither server runs here
in-process. The same JSON-schema path against the real llama-server is in
tests/system/test_real_model.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog
from pydantic import BaseModel

from andy_host.coordinator.store.interface import STORE
from tests.harness import evil, inproc
from tests.harness.inproc import Pool

ANDY = "sweaterdog/andy-4:latest"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Use a tool: what is the weather in Paris"}]


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    """ANDY on an Ollama host and two llama.cpp hosts; notools only on a llama.cpp host
    whose template takes no tools; old only on an Ollama older than logprobs."""
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        ollama = await enter(inproc.fake("ollama", models=f"{ANDY},llama3.2:latest", label="ollama"))
        old = await enter(inproc.fake("ollama", models="old:latest", label="old", version="0.5.7"))
        llama_a = await enter(inproc.fake("llamacpp", model=ANDY, label="llama"))
        llama_b = await enter(inproc.fake("llamacpp", model=ANDY, label="llama"))
        plain = await enter(inproc.fake("llamacpp", model="notools:latest", label="plain", tools=False))
        pool = await enter(inproc.coordinator(tmp_path))
        for kind, url, name in (("ollama", ollama, "host-ollama"), ("ollama", old, "host-old"),
                                ("llamacpp", llama_a, "host-llama-a"), ("llamacpp", llama_b, "host-llama-b"),
                                ("llamacpp", plain, "host-plain")):
            await enter(inproc.agent(pool, kind, url, name))
        await pool.models({ANDY: 3, "old:latest": 1, "notools:latest": 1})
        await inproc.until(lambda: all(h.features for h in pool.registry.hosts.values()), what="features")
        pool.fakes = {"llama_a": llama_a, "llama_b": llama_b, "ollama": ollama}  # type: ignore[attr-defined]
        yield pool


# --- tools --------------------------------------------------------------------------------


async def test_a_required_tool_call_whole(pool: Pool) -> None:
    reply = await pool.client().chat.completions.create(
        model=ANDY, messages=ASK, tools=[WEATHER], tool_choice="required")  # type: ignore[list-item, arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert calls[0].id and calls[0].type == "function"


async def test_a_named_tool_choice_is_honoured(pool: Pool) -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}}}}
    reply = await pool.client().chat.completions.create(
        model=ANDY, messages=[{"role": "user", "content": "hello Tokyo"}], tools=[WEATHER, other],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = reply.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("get_time", {"zone": "Tokyo"})]


async def test_tool_calls_stream_as_deltas_from_every_kind_of_host(pool: Pool) -> None:
    """``auto`` needs no tool_choice support: Ollama and llama.cpp hosts both take it."""
    for _ in range(6):
        stream = await pool.client().chat.completions.create(
            model=ANDY, messages=ASK, tools=[WEATHER], stream=True)  # type: ignore[list-item]
        calls: dict[int, dict[str, str]] = {}
        reasons = []
        async for chunk in stream:
            if not chunk.choices:
                continue
            for delta in chunk.choices[0].delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
            if chunk.choices[0].finish_reason:
                reasons.append(chunk.choices[0].finish_reason)
        assert reasons == ["tool_calls"]
        assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("get_weather", {"city": "Paris"})]
    served = {h.name: h.served for h in pool.registry.hosts.values()}
    assert served["host-ollama"] > 0 and served["host-llama-a"] + served["host-llama-b"] > 0, served


async def test_a_tool_result_reaches_the_model(pool: Pool) -> None:
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    for _ in range(3):  # whichever host takes it
        reply = await pool.client().chat.completions.create(model=ANDY, messages=history, tools=[WEATHER])  # type: ignore[list-item]
        assert reply.choices[0].message.content is not None
        assert reply.choices[0].message.content.endswith("read the tool's result: 21 degrees and sunny")
        assert reply.choices[0].finish_reason == "stop"


async def test_tools_go_only_to_hosts_that_take_them(pool: Pool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await pool.client().chat.completions.create(model="notools", messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    assert caught.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await pool.client().chat.completions.create(
            model="llama3.2", messages=ASK, tools=[WEATHER], tool_choice="required")  # type: ignore[list-item]
    assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]
    assert "tool call" in caught.value.body["message"]  # type: ignore[index]
    # tool_choice "none": the tools are not sent, so any host serves it
    reply = await pool.client().chat.completions.create(model="notools", messages=ASK, tools=[WEATHER],  # type: ignore[list-item]
                                                        tool_choice="none")
    assert reply.choices[0].message.content == "plain heard: Use a tool: what is the weather in Paris"


async def test_a_tool_request_fails_over_before_content(pool: Pool) -> None:
    async with httpx.AsyncClient() as client:
        await client.post(pool.fakes["llama_a"] + "/_fault", json={"mode": "500", "count": -1})  # type: ignore[attr-defined]
        for _ in range(4):
            reply = await pool.client().chat.completions.create(
                model=ANDY, messages=ASK, tools=[WEATHER], tool_choice="required")  # type: ignore[list-item, arg-type]
            assert reply.choices[0].finish_reason == "tool_calls"
        stats = (await client.get(pool.fakes["llama_a"] + "/_stats")).json()  # type: ignore[attr-defined]
    assert stats["faults"] >= 1  # host A failed some of them; host B answered all four


async def test_structured_output_after_content_is_never_stitched(pool: Pool) -> None:
    """A JSON document cut mid-stream cannot be continued elsewhere: the stream ends with
    the explicit error event, not a truncated success."""
    async with httpx.AsyncClient() as client:
        for fake in ("llama_a", "llama_b", "ollama"):
            await client.post(pool.fakes[fake] + "/_fault", json={"mode": "cut", "count": -1})  # type: ignore[attr-defined]
    stream = await pool.client().chat.completions.create(
        model=ANDY, messages=[{"role": "user", "content": "a long JSON answer please about Paris and more"}],
        response_format={"type": "json_object"}, stream=True)
    text = ""
    with pytest.raises(openai.APIError, match="no other host could continue"):
        async for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text  # content went out before the host was cut off
    assert pool.stats.continued == 0


# --- structured output, log probabilities, n -------------------------------------------------


class City(BaseModel):
    city: str
    words: int


async def test_json_schema_output_parses(pool: Pool) -> None:
    for _ in range(3):
        parsed = await pool.client().chat.completions.parse(
            model=ANDY, messages=[{"role": "user", "content": "Which city? Paris"}], response_format=City)
        assert parsed.choices[0].message.parsed == City(city="Paris", words=3)


async def test_json_object_output(pool: Pool) -> None:
    reply = await pool.client().chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "answer in JSON: hi"}],
        response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content or "") == {"answer": "hi"}


async def test_logprobs_whole_and_streamed(pool: Pool) -> None:
    reply = await pool.client().chat.completions.create(
        model=ANDY, messages=[{"role": "user", "content": "count these words"}], logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    stream = await pool.client().chat.completions.create(
        model=ANDY, messages=[{"role": "user", "content": "count these words"}], logprobs=True, stream=True)
    text, tokens = "", []
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                tokens += [t.token for t in chunk.choices[0].logprobs.content]
    assert "".join(tokens) == text and text.endswith("heard: count these words")


async def test_logprobs_only_where_the_backend_gives_them(pool: Pool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await pool.client().chat.completions.create(
            model="old", messages=[{"role": "user", "content": "x"}], logprobs=True)
    assert caught.value.body["param"] == "logprobs"  # type: ignore[index]


async def test_n_choices_each_answered(pool: Pool) -> None:
    reply = await pool.client().chat.completions.create(
        model=ANDY, messages=[{"role": "user", "content": "three please"}], n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all((c.message.content or "").endswith("heard: three please") for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 3 * 4


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2, "stream": True}, "n"),
    ({"n": 99}, "n"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
])
async def test_what_cannot_be_honoured_is_refused_by_name(pool: Pool, extra: dict[str, Any], param: str) -> None:
    body = {"model": ANDY, "messages": [{"role": "user", "content": "x"}], **extra}
    async with pool.http() as client:
        reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


# --- text completions -------------------------------------------------------------------


async def test_text_completion_whole_and_streamed(pool: Pool) -> None:
    client = pool.client()
    for model in (ANDY, "old"):  # llama.cpp's /v1/completions; Ollama's raw /api/generate
        reply = await client.completions.create(model=model, prompt="The capital of France is", max_tokens=32)
        assert reply.object == "text_completion"
        assert reply.choices[0].text.endswith("continued after 'of France is'.")
        assert "heard" not in reply.choices[0].text  # no chat template: a raw continuation
        stream = await client.completions.create(model=model, prompt="The capital of France is", stream=True,
                                                 max_tokens=32)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        assert text.startswith(" and then ") and text.endswith("continued after 'of France is'.")


async def test_text_completion_echo_max_tokens_and_logprobs(pool: Pool) -> None:
    client = pool.client()
    short = await client.completions.create(model=ANDY, prompt="Once upon", max_tokens=2, echo=True, logprobs=2)
    choice = short.choices[0]
    assert choice.text.startswith("Once upon") and choice.finish_reason == "length"
    assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 2
    assert choice.text == "Once upon" + "".join(choice.logprobs.tokens or [])
    assert all(len(t) == 2 for t in choice.logprobs.top_logprobs or [])
    default = await client.completions.create(model=ANDY, prompt="Once upon")
    assert default.usage is not None and default.usage.completion_tokens <= 16  # OpenAI's default max_tokens


# --- models, request ids, CORS, 404 --------------------------------------------------------


async def test_a_model_is_retrieved_by_id(pool: Pool) -> None:
    model = await pool.client().models.retrieve("andy-4")
    assert model.id == ANDY and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        await pool.client().models.retrieve("no-such-model")


async def test_request_ids_are_echoed_or_made_and_reach_the_host(pool: Pool) -> None:
    async with pool.http() as client:
        body = {"model": ANDY, "messages": [{"role": "user", "content": "trace me"}]}
        with structlog.testing.capture_logs() as events:
            mine = await client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "trace-42"})
        made = await client.post("/v1/chat/completions", json=body)
        bad = await client.post("/v1/chat/completions", json={}, headers={"X-Request-Id": "has spaces"})
    assert mine.headers["X-Request-Id"] == "trace-42"
    assert made.headers["X-Request-Id"].startswith("req_")
    assert bad.status_code == 400 and bad.headers["X-Request-Id"].startswith("req_")
    traced = {e["event"] for e in events if e.get("request_id") == "trace-42"}
    assert {"job.done", "job.continuing"} & traced == {"job.done"}  # the coordinator's relay ...
    host_side = [e for e in events if e["event"] == "job.done" and e.get("kind") == "chat"]
    assert host_side and all(e["request_id"] == "trace-42" for e in host_side)  # ... and the host's


async def test_cors_is_off_by_default(pool: Pool) -> None:
    async with pool.http() as client:
        reply = await client.get("/v1/models", headers={"Origin": "https://app.example",
                                                        "Authorization": f"Bearer {pool.key}"})
        preflight = await client.options("/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in reply.headers
    assert preflight.status_code == 403


async def test_cors_for_allowed_origins(tmp_path: Path) -> None:
    async with inproc.coordinator(tmp_path, cors_origins=["https://app.example"]) as pool, pool.http() as client:
        preflight = await client.options("/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        answer = await client.get("/v1/models", headers={"Origin": "https://app.example",
                                                         "Authorization": f"Bearer {pool.key}"})
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "X-Request-Id" in answer.headers["Access-Control-Expose-Headers"]
        other = await client.options("/v1/models", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "GET"})
        assert other.status_code == 403
        admin = await client.options("/api/andy/admin/hosts", headers={"Origin": "https://app.example",
                                                                        "Access-Control-Request-Method": "GET"})
        assert admin.status_code == 403  # never for the admin API


@pytest.mark.parametrize(("path", "says"), [
    ("/api/andy/v1/nope", "There is no endpoint /api/andy/v1/nope. Under /api/andy/v1/"),
    ("/v1/chat", "There is no endpoint /v1/chat. Under /v1/"),
    ("/nope", "Unknown path /nope. The OpenAI API lives under /api/andy/v1/"),
])
async def test_404_says_where_the_api_lives(pool: Pool, path: str, says: str) -> None:
    async with pool.http() as client:
        reply = await client.get(path)
    assert reply.status_code == 404
    assert reply.json()["error"]["message"].startswith(says)


async def test_openapi_lists_every_endpoint(pool: Pool) -> None:
    async with pool.http() as client:
        spec = (await client.get("/openapi.json")).json()
    for path in ("/api/andy/v1/chat/completions", "/api/andy/v1/completions", "/api/andy/v1/embeddings",
                 "/api/andy/v1/models", "/api/andy/v1/models/{model}", "/api/chat", "/api/generate", "/api/embed",
                 "/api/tags", "/api/ps", "/api/show", "/api/version"):
        assert path in spec["paths"], path


# --- a hostile host's extras ----------------------------------------------------------------


async def test_a_hosts_unasked_extras_are_dropped_and_its_logprobs_bounded(tmp_path: Path) -> None:
    """A raw host (tests/harness/evil.py) answers a plain request with tool calls and log
    probabilities nobody asked for, more alternatives than asked, and more log
    probabilities in all than ``max_logprobs``."""
    async def serve(host: evil.RawHost, job: dict[str, Any]) -> None:
        request, job_id = job["request"], job["id"]
        entry = {"token": "x", "logprob": -0.1, "top": [["x", -0.1], ["y", -2.0], ["z", -3.0]]}
        if request.get("logprobs"):
            for _ in range(6):  # 6 x 4096 entries: past max_logprobs (16384)
                await host.send({"type": "chunk", "id": job_id, "content": "x" * 4096, "logprobs": [entry] * 4096})
            return
        await host.send({"type": "chunk", "id": job_id, "content": "plain answer", "logprobs": [entry]})
        await host.send({"type": "done", "id": job_id, "finish_reason": "tool_calls", "usage": {},
                         "tool_calls": [{"id": "c1", "name": "rm_rf", "arguments": "{}"}]})

    features = ["logprobs", "json_schema", "completion", "tool_choice"]
    async with inproc.coordinator(tmp_path) as pool:
        raw = await evil.join(pool.url, evil.hello("raw", [{"name": "evil:latest", "loaded": True, "tools": True}],
                                                   features=features))
        task = asyncio.get_running_loop().create_task(raw.serve(serve))
        try:
            await pool.models({"evil:latest": 1})
            reply = await pool.client().chat.completions.create(
                model="evil", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "plain answer"
            assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason == "stop"
            assert reply.choices[0].logprobs is None
            with pytest.raises(openai.APIError, match="log probabilities exceeded"):
                stream = await pool.client().chat.completions.create(
                    model="evil", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=1,
                    stream=True)
                async for chunk in stream:
                    for token in (chunk.choices[0].logprobs.content or []) if chunk.choices and chunk.choices[
                            0].logprobs else []:
                        assert len(token.top_logprobs) == 1  # no more alternatives than asked
            host = next(iter(pool.registry.hosts.values()))
            assert host.trust.strikes >= 2
        finally:
            await raw.ws.close()
            task.cancel()


async def test_a_strangers_made_up_model_does_not_take_model_auto(tmp_path: Path) -> None:
    """``auto`` goes to the model with the most free slots. A raw host (tests/harness/evil.py)
    that makes up models and claims 1024 slots (an embedding-only one too, which
    ``auto`` embeddings prefer) must not draw every ``auto`` request to itself: a model
    that a trusted host serves (or one that passed answer checks) comes first."""
    async def serve(host: evil.RawHost, job: dict[str, Any]) -> None:
        if job["kind"] == "embed":
            await host.send({"type": "error", "id": job["id"], "status": 500, "message": "hijacked"})
        else:
            await host.done(job["id"], "hijacked", completion_tokens=1)

    async with AsyncExitStack() as stack:
        llama = await stack.enter_async_context(inproc.fake("llamacpp", model="m:latest"))
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path))
        token, _ = await pool.app[STORE].create_token("mine", trusted=True)
        await stack.enter_async_context(inproc.agent(pool, "llamacpp", llama, "trusted-host", token=token))
        raw = await evil.join(pool.url, evil.hello("stranger", [
            {"name": "free-slots:latest", "loaded": True},
            {"name": "embedder:latest", "loaded": True, "embed": True, "chat": False}], capacity=1024))
        task = asyncio.get_running_loop().create_task(raw.serve(serve))
        try:
            await pool.models({"m:latest": 1, "free-slots:latest": 1, "embedder:latest": 1})
            reply = await pool.client().chat.completions.create(
                model="auto", messages=[{"role": "user", "content": "hi"}])
            assert reply.model == "m:latest" and reply.choices[0].message.content != "hijacked"
            embedded = await pool.client().embeddings.create(model="auto", input="hi")
            assert embedded.model == "m:latest"
            assert not raw.jobs
        finally:
            await raw.ws.close()
            task.cancel()
