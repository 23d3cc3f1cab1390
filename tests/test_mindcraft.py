"""Mindcraft's model classes as they call the pool today, each with the library it uses:
Mindcraft-CE's Andy class (plain ``fetch`` on ``/api/v1`` with model ``auto``), the older
Andy class (the ``openai`` npm package v4, a dummy key, ``stop: '***'``, a keyless
``pool_status`` check), Mindcraft's Ollama class (plain ``fetch`` with no headers, the
older ``/api/embeddings``) and the ``ollama`` npm client. The GPT class (the Responses
API) is in tests/coordinator/test_responses.py.

The calls are written for these tests (tests/js/mindcraft.mjs) after reading the
classes' source; hosts run on the fake backends in-process (Ollama's documented API,
llama.cpp's server API: neither server can run here), so answers are the fakes'
deterministic "<label> heard: <last user message>".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.harness import inproc, jsclients
from tests.harness.inproc import Pool

ANDY = "sweaterdog/andy-4:latest"
EMBEDDER = "nomic-embed-text:latest"


@pytest.fixture(autouse=True)
def _node() -> None:
    problem = jsclients.ready()
    if problem is not None:
        pytest.fail(f"{problem} (./scripts/test installs it)")


async def _pool(tmp_path: Path, stack: AsyncExitStack, **overrides: Any) -> Pool:
    enter = stack.enter_async_context
    ollama = await enter(inproc.fake("ollama", models=f"{ANDY},{EMBEDDER}", embed_only="nomic-embed-text",
                                     label="ollama"))
    llama = await enter(inproc.fake("llamacpp", model=ANDY, label="llama"))
    pool = await enter(inproc.coordinator(tmp_path, **overrides))
    await enter(inproc.agent(pool, "ollama", ollama, "host-ollama"))
    await enter(inproc.agent(pool, "llamacpp", llama, "host-llama"))
    await pool.models({ANDY: 2, EMBEDDER: 1})
    return pool


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    async with AsyncExitStack() as stack:
        yield await _pool(tmp_path, stack)


async def test_andy_ce_class_with_model_auto_on_api_v1(pool: Pool) -> None:
    keyed = await jsclients.run("mindcraft.mjs", "andy-fetch", BASE_URL=pool.url, API_KEY=pool.key)
    assert keyed["chat_status"] == 200, keyed
    assert keyed["chat_model"] == ANDY  # `auto` chose the one chat model, and the answer names it
    assert keyed["content"].endswith("heard: hello there")
    assert keyed["embed_status"] == 200, keyed
    assert keyed["embed_model"] == EMBEDDER  # for embeddings, the dedicated embedding model
    assert keyed["embedding_length"] > 0
    keyless = await jsclients.run("mindcraft.mjs", "andy-fetch", BASE_URL=pool.url)
    assert keyless["chat_status"] == 200 and keyless["content"].endswith("heard: hello there")
    assert keyless["embed_status"] == 401  # embeddings need a key unless the admin opens them
    assert keyless["embed_error"]["code"] == "invalid_api_key" and "API key" in keyless["embed_error"]["message"]


async def test_auto_means_the_default_model_when_one_is_set(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        pool = await _pool(tmp_path, stack, default_model="andy-4", default_embedding_model=ANDY)
        answer = await jsclients.run("mindcraft.mjs", "andy-fetch", BASE_URL=pool.url, API_KEY=pool.key)
        assert answer["chat_model"] == ANDY and answer["embed_model"] == ANDY


async def test_auto_with_no_host_is_a_clear_503_at_once(tmp_path: Path) -> None:
    async with inproc.coordinator(tmp_path, queue_timeout=600) as pool:
        answer = await jsclients.run("mindcraft.mjs", "andy-fetch", BASE_URL=pool.url, API_KEY=pool.key)
    assert answer["chat_status"] == 503 and answer["chat_error"]["code"] == "no_available_hosts"
    assert "auto" in answer["chat_error"]["message"]
    assert answer["embed_status"] == 503 and "embedding model" in answer["embed_error"]["message"]


async def test_older_andy_class_with_the_openai_sdk_v4(pool: Pool) -> None:
    answer = await jsclients.run("mindcraft.mjs", "andy-sdk", BASE_URL=pool.url)
    assert answer.get("error") is None, answer
    assert answer["content"].endswith("heard: hello there") and answer["finish_reason"] == "stop"
    assert answer["model"] == ANDY and answer["usage"]["completion_tokens"] > 0
    # its pool check, without a key: the public totals, not the host list
    assert answer["pool_status"] == 200
    assert answer["pool"] == {"total_hosts": 2, "active_hosts": 2, "total_models": 2, "load": 0, "has_hosts": False}


async def test_ollama_class_chats_without_headers_and_embeds_once_the_admin_opens_it(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        closed = await _pool(tmp_path / "closed", stack)
        answer = await jsclients.run("mindcraft.mjs", "ollama-fetch", BASE_URL=closed.url)
        assert answer["chat_status"] == 200 and answer["content"].endswith("heard: hello there")
        assert answer["embed_status"] == 401 and "API key" in answer["embed_error"]  # Ollama's error shape
    async with AsyncExitStack() as stack:
        opened = await _pool(tmp_path / "opened", stack, anonymous_endpoints=["embeddings=2"])
        answers = [await jsclients.run("mindcraft.mjs", "ollama-fetch", BASE_URL=opened.url) for _ in range(3)]
        assert [a["embed_status"] for a in answers] == [200, 200, 429]  # its own count per address
        assert answers[0]["embedding_length"] > 0
        assert [a["chat_status"] for a in answers] == [200, 200, 200]  # chat is counted apart
        async with opened.http() as http:  # opening embeddings leaves the default pool_status totals open
            assert (await http.get("/api/andy/pool_status")).status_code == 200


async def test_an_admin_may_close_the_keyless_pool_status(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        pool = await _pool(tmp_path, stack, anonymous_endpoints=["pool_status=0"])
        answer = await jsclients.run("mindcraft.mjs", "andy-sdk", BASE_URL=pool.url)
        assert answer["content"].endswith("heard: hello there")  # chat stays open
        assert answer["pool_status"] == 401
        async with pool.http() as http:
            keyed = await http.get("/api/andy/pool_status", headers={"Authorization": f"Bearer {pool.key}"})
        assert keyed.status_code == 200 and "hosts" in keyed.json()


async def test_the_ollama_npm_client(pool: Pool) -> None:
    answer = await jsclients.run("mindcraft.mjs", "ollama-client", BASE_URL=pool.url, API_KEY=pool.key)
    assert answer["content"].endswith("heard: hello there") and answer["done_reason"] == "stop"
    assert answer["streamed"].endswith("heard: hello there")
    assert answer["vectors"] == 2


async def test_older_andy_class_drops_turns_until_its_history_fits_a_one_host_pool(tmp_path: Path) -> None:
    """A 7-turn history too long for the only host's 2,048-token context: each too-long
    try is a 400 context_length_exceeded at once (queue_timeout is 600 s: a wait for
    another host would outlast the test's bound), and the class's own retry with fewer
    turns gets an answer."""
    long_turn = "w " * 700  # about 704 tokens to the fake llama-server
    turns = []
    for i in range(3):
        turns += [{"role": "user", "content": long_turn}, {"role": "assistant", "content": f"!craft {i}"}]
    turns.append({"role": "user", "content": "now what"})
    async with AsyncExitStack() as stack:
        llama = await stack.enter_async_context(inproc.fake("llamacpp", model=ANDY, label="llama", ctx_size=2048))
        pool = await stack.enter_async_context(inproc.coordinator(tmp_path, queue_timeout=600, request_timeout=900))
        await stack.enter_async_context(inproc.agent(pool, "llamacpp", llama, "only-host"))
        await pool.models({ANDY: 1})
        answer = await jsclients.run("mindcraft.mjs", "andy-sdk-history", BASE_URL=pool.url, limit=60,
                                     TURNS=json.dumps(turns))
    assert answer["content"] == "llama heard: now what", answer
    assert answer["codes"] == ["context_length_exceeded"]  # 7 turns (3 long ones) did not fit, 6 did
    assert answer["turns"] == 6
