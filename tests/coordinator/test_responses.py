"""The Responses API (``POST <prefix>/responses``) in one event loop (tests/harness/inproc.py): a
coordinator, host agents and fake llama.cpp backends; clients are the official ``openai``
Python package, plain HTTP, and the ``openai`` npm package v4 as Mindcraft's GPT class
uses it (tests/js/responses.mjs)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from andy_host.coordinator.api.openai import API_PREFIXES
from tests.harness import inproc, jsclients
from tests.harness.inproc import Pool, fault

MODEL = "m:latest"
INSTRUCTIONS = "You are a Minecraft bot. Answer briefly."
MESSAGES: list[Any] = [
    {"role": "user", "content": "hello bot"},
    {"role": "assistant", "content": "hello player"},
    {"role": "user", "content": "collect some wood"},
]
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
FAILOVER = {"ttft_timeout": 1.5, "token_timeout": 1.0, "answer_timeout": 1.5, "eject_after": 1000}


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    """One llama.cpp host (its fake echoes "pool heard: <the last user message>")."""
    async with AsyncExitStack() as stack:
        llama = await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL, label="pool"))
        coordinator = await stack.enter_async_context(inproc.coordinator(tmp_path, **FAILOVER))
        await stack.enter_async_context(inproc.agent(coordinator, "llamacpp", llama, "host-llama"))
        await coordinator.models({MODEL: 1})
        coordinator.fakes = {"llama": llama}  # type: ignore[attr-defined]
        yield coordinator
        await close_clients(coordinator)


def client(pool: Pool, prefix: str = "/api/andy/v1", key: str | None = None) -> openai.AsyncOpenAI:
    """An SDK client for ``pool``, closed with it (not left to the garbage collector)."""
    sdk = openai.AsyncOpenAI(base_url=pool.url + prefix, api_key=key or pool.key, max_retries=0, timeout=30)
    pool.__dict__.setdefault("sdk_clients", []).append(sdk)
    return sdk


async def close_clients(pool: Pool) -> None:
    for sdk in pool.__dict__.pop("sdk_clients", []):
        await sdk.close()


# --- whole answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", API_PREFIXES)
async def test_output_text_is_what_chat_answers(pool: Pool, prefix: str) -> None:
    sdk = client(pool, prefix)
    response = await sdk.responses.create(model="m", instructions=INSTRUCTIONS, input=MESSAGES)
    chat = await sdk.chat.completions.create(
        model="m", messages=[{"role": "system", "content": INSTRUCTIONS}, *MESSAGES])
    assert response.output_text == chat.choices[0].message.content == "pool heard: collect some wood"
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.error is None and response.incomplete_details is None
    assert response.model == MODEL  # the model used, as resolved
    assert response.instructions == INSTRUCTIONS
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


async def test_input_as_a_string_and_content_parts(pool: Pool) -> None:
    sdk = client(pool)
    response = await sdk.responses.create(model=MODEL, input="just a string")
    assert response.output_text == "pool heard: just a string"
    parts = await sdk.responses.create(model=MODEL, input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be kind"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi", "annotations": []}]},
        {"role": "user", "content": [{"type": "input_text", "text": "two "}, {"type": "input_text", "text": "parts"}]},
    ])
    assert parts.output_text == "pool heard: two parts"


async def test_max_output_tokens_cuts_the_answer_and_says_so(pool: Pool) -> None:
    response = await client(pool).responses.create(model=MODEL, input="one two three four five",
                                                   max_output_tokens=2)
    assert response.output_text == "pool heard:"
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 2
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]


async def test_settings_are_echoed_and_nothing_is_stored(pool: Pool) -> None:
    async with pool.http() as http:
        reply = await http.post("/v1/responses", json={
            "model": MODEL, "input": "echo", "temperature": 0.5, "top_p": 0.9, "metadata": {"bot": "andy"},
            "store": True, "user": "player-1", "reasoning": None, "include": [], "parallel_tool_calls": False,
            "text": {"format": {"type": "text"}}, "service_tier": "auto", "some_future_field": 1})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["metadata"] == {"bot": "andy"} and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["store"] is False  # accepted, but this pool keeps nothing
    assert body["previous_response_id"] is None and body["parallel_tool_calls"] is False
    assert body["tool_choice"] == "auto" and body["tools"] == []
    assert body["text"]["format"] == {"type": "text"}
    assert body["output"][0]["content"][0] == {"type": "output_text", "text": "pool heard: echo", "annotations": [],
                                               "logprobs": []}
    assert "RateLimit-Limit" in reply.headers  # limited as chat is


async def test_anonymous_clients_may_use_it_as_they_may_chat(pool: Pool) -> None:
    response = await client(pool, "/v1", key="sk-no-key").responses.create(model=MODEL, input="anonymous")
    assert response.output_text == "pool heard: anonymous"


async def test_json_schema_output_parses(pool: Pool) -> None:
    class City(BaseModel):
        city: str
        words: int

    parsed = await client(pool).responses.parse(model=MODEL, input="Which city? Paris", text_format=City)
    assert parsed.output_parsed == City(city="Paris", words=3)
    response = await client(pool).responses.create(model=MODEL, input="Which city? Rome",
                                                   text={"format": {"type": "json_object"}})
    assert json.loads(response.output_text) == {"answer": "Rome"}


# --- function tools --------------------------------------------------------------------------------


async def test_function_tools_round_trip(pool: Pool) -> None:
    sdk = client(pool)
    asked = await sdk.responses.create(model=MODEL, input="Use a tool: the weather in Paris",
                                       tools=[WEATHER])  # type: ignore[list-item]
    [call] = asked.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id and call.id
    assert asked.output_text == "" and asked.tools[0].name == "get_weather"  # type: ignore[union-attr]
    answered = await sdk.responses.create(model=MODEL, tools=[WEATHER], input=[  # type: ignore[list-item]
        {"role": "user", "content": "Use a tool: the weather in Paris"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"},
    ])
    assert answered.output_text == "pool read the tool's result: sunny, 24 C"
    required = await sdk.responses.create(model=MODEL, input="no mention of it", tools=[WEATHER],  # type: ignore[list-item]
                                          tool_choice={"type": "function", "name": "get_weather"})
    assert required.output[0].type == "function_call"
    assert required.tool_choice.type == "function"  # type: ignore[union-attr]
    plain = await sdk.responses.create(model=MODEL, input="Use a tool: x", tools=[WEATHER],  # type: ignore[list-item]
                                       tool_choice="none")
    assert plain.output_text == "pool heard: Use a tool: x"


async def test_a_streamed_function_call(pool: Pool) -> None:
    async with client(pool).responses.stream(model=MODEL, input="Use a tool: the weather in Oslo",
                                             tools=[WEATHER]) as stream:  # type: ignore[list-item]
        types = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}


# --- streamed ----------------------------------------------------------------------------------


async def test_streamed_deltas_make_the_final_text(pool: Pool) -> None:
    async with client(pool, "/api/v1").responses.stream(model=MODEL, instructions=INSTRUCTIONS,
                                                        input=MESSAGES) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas) and deltas
    assert types[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", "response.completed"]
    assert "".join(d.delta for d in deltas) == final.output_text == "pool heard: collect some wood"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed" and final.model == MODEL and final.usage is not None
    item_ids = {getattr(e, "item_id", None) for e in events} - {None}
    assert item_ids == {final.output[0].id}  # type: ignore[union-attr]


async def test_streamed_events_are_the_sdks_typed_events(pool: Pool) -> None:
    from openai.types.responses import (
        ResponseCompletedEvent,
        ResponseContentPartAddedEvent,
        ResponseContentPartDoneEvent,
        ResponseCreatedEvent,
        ResponseInProgressEvent,
        ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent,
        ResponseTextDeltaEvent,
        ResponseTextDoneEvent,
    )

    stream = await client(pool, "/v1").responses.create(model=MODEL, input="typed events", stream=True)
    events = [event async for event in stream]
    kinds = [type(e) for e in events]
    assert kinds[:4] == [ResponseCreatedEvent, ResponseInProgressEvent, ResponseOutputItemAddedEvent,
                         ResponseContentPartAddedEvent]
    assert set(kinds[4:-4]) == {ResponseTextDeltaEvent}
    assert kinds[-4:] == [ResponseTextDoneEvent, ResponseContentPartDoneEvent, ResponseOutputItemDoneEvent,
                          ResponseCompletedEvent]
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.output_text == "pool heard: typed events"
    assert events[0].response.id == completed.response.id  # type: ignore[union-attr]


async def test_stream_wire_format(pool: Pool) -> None:
    body = {"model": MODEL, "input": "one two three four", "stream": True, "max_output_tokens": 3}
    async with pool.http() as http:
        reply = await http.post("/v1/responses", json=body)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in reply.text.split("\n\n") if e]
    parsed = []
    for event in events:
        head, data = event.split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[len("data: "):])
        assert payload["type"] == head[len("event: "):]
        parsed.append(payload)
    assert parsed[-1]["type"] == "response.incomplete"
    assert parsed[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert parsed[-1]["response"]["output"][0]["content"][0]["text"] == "pool heard: one"
    done = next(p for p in parsed if p["type"] == "response.output_text.done")
    assert done["text"] == "pool heard: one" and done["logprobs"] == []
    assert all(p["logprobs"] == [] and p["content_index"] == 0 for p in parsed
               if p["type"] == "response.output_text.delta")


async def test_a_stream_broken_after_content_ends_in_response_failed(pool: Pool) -> None:
    await fault(pool.fakes["llama"], "cut", count=-1)  # type: ignore[attr-defined]
    stream = await client(pool).responses.create(model=MODEL, input="doomed one two three four five six",
                                                 stream=True)
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as raised:  # the error event, raised by the SDK
        async for event in stream:
            seen.append(event)
    assert raised.value.code == "stream_interrupted"
    types = [e.type for e in seen]
    assert "response.output_text.delta" in types  # content went out before the host was cut off
    assert types[-1] == "response.failed" and "response.completed" not in types
    failed = seen[-1].response
    assert failed.status == "failed" and failed.error.code == "stream_interrupted"
    assert "no other host could continue" in failed.error.message
    full = "pool heard: doomed one two three four five six"
    assert failed.output_text and full.startswith(failed.output_text) and failed.output_text != full
    assert failed.output[0].status == "incomplete"
    with pytest.raises(openai.APIError):  # the stream helper never makes a final response of it
        async with client(pool).responses.stream(model=MODEL, input="doomed again one two three four") as helper:
            async for _ in helper:
                pass
            await helper.get_final_response()


async def test_a_failure_before_content_is_an_http_error(pool: Pool) -> None:
    await fault(pool.fakes["llama"], "400", count=-1, message="nope")  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError) as raised:
        await client(pool).responses.create(model=MODEL, input="rejected", stream=True)
    assert raised.value.status_code == 400 and raised.value.code == "backend_rejected"


async def test_the_openapi_document_describes_it(pool: Pool) -> None:
    async with pool.http() as http:
        spec = (await http.get("/openapi.json")).json()
    for prefix in API_PREFIXES:
        op = spec["paths"][f"{prefix}/responses"]["post"]
        assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
        assert op["requestBody"]["content"]["application/json"]["schema"]["required"] == ["model", "input"]


# --- refused ----------------------------------------------------------------------------------


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_123"}}, "prompt"),
    ({"tools": [{"type": "web_search_preview"}]}, "tools"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]}, "tools"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tool_choice": {"type": "function", "name": "not_in_tools"}}, "tool_choice"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, "input"),
    ({"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input"),
    ({"input": []}, "input"),
    ({"input": None}, "input"),
    ({"instructions": ["not", "a", "string"]}, "instructions"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"reasoning": {"summary": "auto"}}, "reasoning"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"model": 5}, "model"),
    ({"model": "no-such-model"}, "model"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED, ids=[f"{p}-{i}" for i, (_, p) in enumerate(REFUSED)])
async def test_what_cannot_be_honoured_is_a_400_naming_it(pool: Pool, extra: dict[str, Any], param: str) -> None:
    async with pool.http() as http:
        reply = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", **extra})
    assert reply.status_code in (400, 404), reply.text
    error = reply.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]
    for chat_word in ("`messages", "messages[", "response_format", "max_tokens", ".function."):
        assert chat_word not in error["message"], error  # the Responses API's words


async def test_the_sdk_sees_the_param_of_a_refusal(pool: Pool) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client(pool).responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    assert raised.value.param == "previous_response_id" and raised.value.code == "unsupported_parameter"
    assert "send the whole conversation in `input`" in raised.value.message


# --- context errors, and Mindcraft's client ----------------------------------------------------


@pytest.fixture
async def tight_pool(tmp_path: Path) -> AsyncIterator[Pool]:
    """Two hosts, both saying every prompt exceeds the context (a second host must agree)."""
    async with AsyncExitStack() as stack:
        fakes = [await stack.enter_async_context(inproc.fake("llamacpp", model=MODEL)) for _ in range(2)]
        coordinator = await stack.enter_async_context(inproc.coordinator(tmp_path, **FAILOVER))
        for i, url in enumerate(fakes):
            await stack.enter_async_context(inproc.agent(coordinator, "llamacpp", url, f"ctx-host-{i}"))
            await fault(url, "ctx", count=-1)
        await coordinator.models({MODEL: 2})
        yield coordinator
        await close_clients(coordinator)


async def test_context_length_exceeded_keeps_its_code(tight_pool: Pool) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client(tight_pool).responses.create(model=MODEL, input="long", max_output_tokens=50)
    assert raised.value.code == "context_length_exceeded" and raised.value.param == "input"
    assert "messages" not in raised.value.message and "input" in raised.value.message
    with pytest.raises(openai.BadRequestError) as streamed:
        await client(tight_pool).responses.create(model=MODEL, input="long", stream=True)
    assert streamed.value.code == "context_length_exceeded"


def _js_ready() -> None:
    problem = jsclients.ready()
    if problem is not None:
        pytest.skip(problem)


async def test_mindcrafts_gpt_class_with_the_openai_npm_package(pool: Pool) -> None:
    _js_ready()
    env = {"BASE_URL": pool.url + "/api/andy/v1", "API_KEY": pool.key, "MODEL": "m"}
    created = await jsclients.run("responses.mjs", MODE="create", **env)
    assert created["output_text"] == "pool heard: collect some wood" and created["model"] == MODEL
    assert created["status"] == "completed" and created["id"].startswith("resp_")
    streamed = await jsclients.run("responses.mjs", MODE="stream", **env)
    assert streamed["deltas"] == streamed["final_text"] == "pool heard: collect some wood"
    assert streamed["types"][0] == "response.created" and streamed["types"][-1] == "response.completed"
    assert streamed["sequence"] == list(range(len(streamed["types"])))
    await fault(pool.fakes["llama"], "cut", count=-1)  # type: ignore[attr-defined]
    broken = await jsclients.run("responses.mjs", MODE="broken", PROMPT="doomed one two three four five", **env)
    assert broken["threw"] and broken["code"] == "stream_interrupted"
    assert broken["types"][-1] == "response.failed" and "response.completed" not in broken["types"]


async def test_mindcraft_sees_context_length_exceeded(tight_pool: Pool) -> None:
    _js_ready()
    result = await jsclients.run("responses.mjs", MODE="error", BASE_URL=tight_pool.url + "/v1",
                                 API_KEY=tight_pool.key, MODEL=MODEL)
    assert result == {"threw": True, "code": "context_length_exceeded", "status": 400,
                      "message": result["message"], "types": []}
