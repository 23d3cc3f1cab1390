"""The pool's spine end to end: real coordinator and host processes on 127.0.0.1,
backends faked faithfully (Ollama's documented API; llama.cpp's server API),
clients are the official ``openai`` package and plain HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.procs import Processes, get_json, wait_models

ANDY = "sweaterdog/andy-4:latest"


@pytest.fixture(scope="module")
def pool(module_procs: Processes) -> dict[str, Any]:
    ollama = module_procs.fake(
        "ollama", "--models", f"{ANDY},llama3.2:latest,broken:latest,nomic-embed-text:latest",
        "--embed-only", "nomic-embed-text", "--failing", "broken", "--token-delay", "0.01",
    )
    llama = module_procs.fake("llamacpp", "--model", ANDY, "--token-delay", "0.01")
    coordinator = module_procs.coordinator()
    module_procs.agent(coordinator.url, "ollama", ollama.url, "host-ollama")
    module_procs.agent(coordinator.url, "llamacpp", llama.url, "host-llama")
    wait_models(coordinator.url, {ANDY: 2, "llama3.2:latest": 1})
    client = openai.OpenAI(base_url=coordinator.url + "/api/andy/v1", api_key=coordinator.key, max_retries=0)
    return {"url": coordinator.url, "client": client, "key": coordinator.key, "coordinator": coordinator}


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_chat_non_streaming(pool: dict[str, Any]) -> None:
    reply = pool["client"].chat.completions.create(
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


def test_chat_streaming_with_usage(pool: dict[str, Any]) -> None:
    stream = pool["client"].chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ollama heard: stream me"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_streaming_wire_format_ends_with_done(pool: dict[str, Any]) -> None:
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "raw"}], "stream": True})
    request = urllib.request.Request(
        pool["url"] + "/v1/chat/completions", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all("usage" not in p for p in payloads)  # only with include_usage
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_string_and_max_tokens(pool: dict[str, Any]) -> None:
    client = pool["client"]
    # Mindcraft sends stop as a single string
    reply = client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "one two three"}], stop="two"
    )
    assert reply.choices[0].message.content == "ollama heard: one "
    reply = client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "one two three"}], stop=["three", "zzz"]
    )
    assert reply.choices[0].message.content == "ollama heard: one two "
    reply = client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "a b c d e f"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "ollama heard: a"


def test_content_parts_and_unknown_fields(pool: dict[str, Any]) -> None:
    status, body, _ = post(
        pool["url"] + "/api/andy/v1/chat/completions",
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
    assert body["choices"][0]["message"]["content"] == "ollama heard: part one part two"


def test_model_listings(pool: dict[str, Any]) -> None:
    listed = pool["client"].models.list()
    ids = [m.id for m in listed.data]
    assert ids.count(ANDY) == 1  # served by two hosts, listed once
    assert {ANDY, "llama3.2:latest", "nomic-embed-text:latest", "broken:latest"} <= set(ids)
    andy = {m["name"]: m["hosts"] for m in get_json(pool["url"] + "/api/andy/models")["models"]}
    assert andy[ANDY] == 2 and andy["llama3.2:latest"] == 1


def test_short_name_alias(pool: dict[str, Any]) -> None:
    reply = pool["client"].chat.completions.create(model="andy-4", messages=[{"role": "user", "content": "hi"}])
    assert reply.model == ANDY
    assert reply.choices[0].message.content.endswith("heard: hi")


def test_requests_spread_over_both_hosts(pool: dict[str, Any]) -> None:
    def ask(i: int) -> str:
        reply = pool["client"].chat.completions.create(model=ANDY, messages=[{"role": "user", "content": f"n{i}"}])
        return reply.choices[0].message.content.split()[0]

    with ThreadPoolExecutor(8) as ex:
        labels = set(ex.map(ask, range(8)))
    assert labels == {"ollama", "llamacpp"}


def test_error_malformed_json(pool: dict[str, Any]) -> None:
    status, body, _ = post(pool["url"] + "/api/andy/v1/chat/completions", b'{"model": "llama3.2", "messages": [')
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in body["error"]["message"]


def test_error_missing_messages_and_bad_types(pool: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        pool["client"].chat.completions.create(model="llama3.2", messages=[])
    assert err.value.status_code == 400
    assert err.value.body["param"] == "messages"  # type: ignore[index]
    status, body, _ = post(
        pool["url"] + "/v1/chat/completions",
        json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(),
    )
    assert status == 400 and body["error"]["param"] == "temperature"


def test_error_unknown_model(pool: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        pool["client"].chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


def test_error_backend_failure_is_502_in_the_coordinators_words(pool: dict[str, Any]) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        pool["client"].chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 502
    assert "backend failed (HTTP 500)" in err.value.message
    assert "CUDA" not in err.value.message  # a host's own text never reaches a client...
    logged = pool["coordinator"].wait_event("job.host_error", status=500)
    assert "CUDA error: out of memory" in logged["message"] and logged["host_id"]  # ...it goes to the log


def test_error_oversized_body(pool: dict[str, Any]) -> None:
    huge = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]})
    status, body, _ = post(pool["url"] + "/v1/chat/completions", huge.encode())
    assert status == 413
    assert body["error"]["message"]


def test_embeddings(pool: dict[str, Any]) -> None:
    result = pool["client"].embeddings.create(model="nomic-embed-text", input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    assert result.data[0].embedding != result.data[1].embedding
    again = pool["client"].embeddings.create(model="nomic-embed-text", input="alpha")
    assert again.data[0].embedding == result.data[0].embedding


def test_model_that_cannot_embed_gets_a_clear_400(procs: Processes) -> None:
    backend = procs.fake("llamacpp", "--model", "chat-only:latest", "--no-embeddings")
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "llamacpp", backend.url, "chat-only-host")
    wait_models(coordinator.url, {"chat-only:latest": 1})
    client = openai.OpenAI(base_url=coordinator.url + "/api/andy/v1", api_key=coordinator.key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="chat-only", input="x")
    assert "cannot create embeddings" in err.value.message
