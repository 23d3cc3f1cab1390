"""End to end on real inference: a coordinator and two hosts, each managing its own
llama-server (built from source by scripts/install-llama-server) serving
SmolLM2-135M-Instruct from PyPI. Clients: the ``openai`` package.

These tests prove the model sees the prompt: a long message is counted as at least as
many prompt tokens as it has words, simple questions are answered right (streamed and
not, the same text both ways), and embeddings of related texts are closer than of
unrelated ones."""

from __future__ import annotations

import base64
import math
import os
import signal
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import psutil
import pytest
from pydantic import BaseModel

from andy_host.coordinator.store.sqlite import SQLiteDatabase as Store
from andy_host.tools.llama_build import find_llama_server
from tests.harness.procs import Proc, Processes, wait_models

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m:latest"
ADMIN = "admin-secret"
SHORT = "smollm2-135m"
PROMPT = [{"role": "user", "content": "Write a short story about a red fox in a forest."}]
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid"}
MANAGED_ENV = {
    "ANDY_HOST_BACKEND_THREADS": "1",
    "ANDY_HOST_BACKEND_PARALLEL": "2",
    "ANDY_HOST_BACKEND_CTX_SIZE": "2048",
}


@pytest.fixture(scope="module")
def real_pool(module_procs: Processes) -> dict[str, Any]:
    if find_llama_server() is None:
        if os.environ.get("ANDY_HOST_SKIP_E2E") == "1":
            pytest.skip("llama-server not installed and ANDY_HOST_SKIP_E2E=1")
        pytest.fail("llama-server is not installed: run scripts/setup (or scripts/install-llama-server)")
    coordinator = module_procs.coordinator(name="real-coordinator", env={
        "ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ADMIN, "ANDY_HOST_COORDINATOR_CHECK_MAX_TOKENS": "12"})
    store = Store(str(module_procs.tmp / "coordinator.db"))
    trusted, _ = store.create_token("the admin's machine", trusted=True)
    store.close()
    agents = [
        module_procs.agent(
            coordinator.url, "llamacpp", None, f"real-host-{i}", "--managed", "--model", SHORT,
            "--max-concurrency", "2", *(["--token", trusted] if i == 1 else []), env=MANAGED_ENV, timeout=120,
        )
        for i in (1, 2)
    ]
    wait_models(coordinator.url, {MODEL: 2}, timeout=60)
    client = openai.OpenAI(base_url=coordinator.url + "/api/andy/v1", api_key=coordinator.key, max_retries=0, timeout=120)
    return {"coordinator": coordinator, "agents": agents, "client": client}


def greedy(client: openai.OpenAI, messages: list[dict[str, str]] = PROMPT, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=SHORT, messages=messages, temperature=0, seed=1, **kwargs)


def question(country: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of {country}? Answer in one word."}]


def streamed_text(client: openai.OpenAI, messages: list[dict[str, str]], **kwargs: Any) -> str:
    chunks = greedy(client, messages, stream=True, **kwargs)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_the_model_sees_the_whole_prompt(real_pool: dict[str, Any]) -> None:
    """A 300-word message counts as at least 300 prompt tokens (a broken chat template
    turned every prompt into 3 tokens while the answers still looked fine)."""
    words = " ".join(f"word{i % 50}" for i in range(300))
    reply = greedy(real_pool["client"], [{"role": "user", "content": words}], max_tokens=1)
    assert reply.usage.prompt_tokens >= 300


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_simple_questions_are_answered_right(real_pool: dict[str, Any], stream: bool) -> None:
    """A 135M model is fragile, so several questions are asked and most must be right."""
    client = real_pool["client"]
    answers = {}
    for country in CAPITALS:
        if stream:
            answers[country] = streamed_text(client, question(country), max_tokens=16)
        else:
            answers[country] = greedy(client, question(country), max_tokens=16).choices[0].message.content
    right = [c for c, capital in CAPITALS.items() if capital.lower() in answers[c].lower()]
    assert len(right) >= 4, answers


def test_streamed_answer_equals_the_whole_one(real_pool: dict[str, Any]) -> None:
    client = real_pool["client"]
    for messages in (question("Japan"), PROMPT):
        whole = greedy(client, messages, max_tokens=40).choices[0].message.content
        assert streamed_text(client, messages, max_tokens=40) == whole


def test_a_stream_rescued_from_a_killed_backend_is_as_long_as_an_uninterrupted_one(
        real_pool: dict[str, Any]) -> None:
    """The llama-server serving a stream is killed after 20 chunks; the other host
    continues it. Its usage counts as many tokens as the uninterrupted answer's, and it
    ends the same way (the text after the cut may differ: the prefix is tokenized anew)."""
    client, coordinator = real_pool["client"], real_pool["coordinator"]
    asked = {"max_tokens": 120, "stream": True, "stream_options": {"include_usage": True}}

    def run(kill_after: int | None) -> tuple[str, int, str | None]:
        text, usage, finish = "", 0, None
        for n, chunk in enumerate(greedy(client, PROMPT, **asked)):
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if n == kill_after:
                status = httpx.get(coordinator.url + "/api/andy/pool_status",
                                   headers={"Authorization": f"Bearer {coordinator.key}"}).json()
                busy = next(h["name"] for h in status["hosts"] if h["load"])
                agent = next(a for a in real_pool["agents"] if a.name == busy)
                os.kill(_llama_child(agent).pid, signal.SIGKILL)
        return text, usage, finish

    whole = run(None)
    before = httpx.get(coordinator.url + "/health").json()["stats"]["rescued"]
    rescued = run(20)
    assert httpx.get(coordinator.url + "/health").json()["stats"]["rescued"] == before + 1  # it was continued
    print(f"uninterrupted: {whole[1]} tokens, {len(whole[0])} chars; rescued: {rescued[1]} tokens, "
          f"{len(rescued[0])} chars")
    assert whole[2] == "length" and whole[1] == 120
    assert rescued[1:] == whole[1:], (whole, rescued)
    assert rescued[0][:40] == whole[0][:40]
    wait_models(coordinator.url, {MODEL: 2}, timeout=90)  # the killed one is back for the next tests


class Capital(BaseModel):
    city: str


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_json_schema_output_from_the_real_model(real_pool: dict[str, Any], stream: bool) -> None:
    """The schema reaches llama-server as a grammar: the answer parses, whatever a 135M
    model would have written unconstrained (it starts with a markdown fence)."""
    client = real_pool["client"]
    messages = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    if stream:
        text = streamed_text(client, messages, max_tokens=40, response_format={
            "type": "json_schema", "json_schema": {"name": "capital", "schema": Capital.model_json_schema()}})
        answer = Capital.model_validate_json(text)
    else:
        parsed = client.chat.completions.parse(model=SHORT, messages=messages, temperature=0, seed=1, max_tokens=40,
                                               response_format=Capital)
        answer = parsed.choices[0].message.parsed
    assert answer is not None and answer.city.strip()
    assert "paris" in answer.city.lower()


def test_logprobs_and_text_completion_from_the_real_model(real_pool: dict[str, Any]) -> None:
    client = real_pool["client"]
    reply = greedy(client, question("Italy"), max_tokens=8, logprobs=True, top_logprobs=2)
    tokens = reply.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == reply.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)
    completion = client.completions.create(model=SHORT, prompt="The capital of France is", max_tokens=4,
                                           temperature=0)
    assert "Paris" in completion.choices[0].text  # a raw continuation, no chat template around it


def test_non_streaming_chat(real_pool: dict[str, Any]) -> None:
    reply = greedy(real_pool["client"], max_tokens=40)
    assert reply.model == MODEL
    assert reply.choices[0].message.content.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 40


def test_streaming_matches_non_streaming(real_pool: dict[str, Any]) -> None:
    client = real_pool["client"]
    whole = greedy(client, max_tokens=30).choices[0].message.content
    chunks = list(greedy(client, max_tokens=30, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_max_tokens_gives_length(real_pool: dict[str, Any]) -> None:
    reply = greedy(real_pool["client"], max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_stop_string_ends_the_text(real_pool: dict[str, Any]) -> None:
    client = real_pool["client"]
    full = greedy(client, max_tokens=40).choices[0].message.content
    words = [w for w in full.split() if len(w) > 3]
    assert len(words) >= 3, full
    stop = words[len(words) // 2]
    cut = greedy(client, max_tokens=40, stop=stop).choices[0]
    assert stop not in cut.message.content
    assert full.startswith(cut.message.content)
    assert cut.finish_reason == "stop"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_embeddings(real_pool: dict[str, Any]) -> None:
    client = real_pool["client"]
    one = client.embeddings.create(model=SHORT, input="a red fox")
    many = client.embeddings.create(model=SHORT, input=["a red fox", "a blue whale"])
    again = client.embeddings.create(model=SHORT, input="a red fox")
    assert len(one.data) == 1 and len(many.data) == 2
    assert len(one.data[0].embedding) == 576  # SmolLM2-135M's n_embd
    assert one.data[0].embedding == pytest.approx(again.data[0].embedding, abs=1e-5)
    assert many.data[0].embedding != many.data[1].embedding
    assert one.usage.prompt_tokens > 0
    b64 = client.embeddings.create(model=SHORT, input="a red fox", encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)  # type: ignore[arg-type]
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert list(decoded) == pytest.approx(one.data[0].embedding, abs=1e-5)


RELATED = [  # (a text, a related one, an unrelated one): sentence-level, as a 135M model can tell
    ("The cat sat on the mat.", "The cat sat on the rug.", "Quarterly tax filings are due in April."),
    ("I love pizza", "I love pasta", "The stock market fell"),
    ("Paris is the capital of France", "The capital of France is Paris", "Photosynthesis converts light into energy"),
    ("a red fox", "a brown fox", "a tax form"),
]


def test_related_texts_embed_closer_than_unrelated_ones(real_pool: dict[str, Any]) -> None:
    client = real_pool["client"]
    held = []
    for a, b, other in RELATED:
        ea, eb, eo = (d.embedding for d in client.embeddings.create(model=SHORT, input=[a, b, other]).data)
        held.append(cosine(ea, eb) > max(cosine(ea, eo), cosine(eb, eo)))
    assert sum(held) >= 3, held


def test_each_host_learned_that_llama_server_echoes(real_pool: dict[str, Any]) -> None:
    """The start-up continuation probe, run against the real llama-server."""
    for agent in real_pool["agents"]:
        probed = agent.wait_event("continuation.probed")
        assert probed["echoes"] is True


def test_concurrent_requests_use_both_hosts(real_pool: dict[str, Any]) -> None:
    coordinator: Proc = real_pool["coordinator"]
    before = len(coordinator.events())

    def ask(i: int) -> tuple[str, str]:
        raw = real_pool["client"].chat.completions.with_raw_response.create(
            model=SHORT, messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=8
        )
        return raw.parse().choices[0].finish_reason, raw.headers["X-Request-Id"]

    with ThreadPoolExecutor(6) as ex:
        answers = list(ex.map(ask, range(6)))
    assert all(finish in ("stop", "length") for finish, _ in answers)
    ours = {request_id for _, request_id in answers}  # not a late line of an earlier test's request
    deadline = time.monotonic() + 10
    while True:  # job.done is logged just after the answer went out
        done = [e for e in coordinator.events()[before:] if e.get("event") == "job.done" and e.get("request_id") in ours]
        if len(done) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(done) == 6
    assert len({e["host_id"] for e in done}) == 2


def test_honest_hosts_pass_200_answer_checks(real_pool: dict[str, Any]) -> None:
    """The stranger's answers are checked on the trusted host: 200 canaries on the real
    model, each a sampled answer (temperature 0.6-0.9, streamed or whole) scored by the
    model's distribution; none fails, and an honest host is never quarantined."""
    coordinator: Proc = real_pool["coordinator"]
    listing = httpx.get(coordinator.url + "/api/andy/admin/hosts", headers={"Authorization": f"Bearer {ADMIN}"},
                        timeout=10).json()["hosts"]
    stranger = next(h for h in listing if h["name"] == "real-host-2" and h["connected"])
    assert not stranger["trusted"] and next(h for h in listing if h["name"] == "real-host-1")["trusted"]

    def run(count: int) -> dict[str, Any]:
        reply = httpx.post(coordinator.url + f"/api/andy/admin/hosts/{stranger['host_id']}/check", json={"count": count},
                           headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    started = time.monotonic()
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(run, [100, 100]))
    passed = sum(r["passed"] for r in results)
    failed = sum(r["failed"] for r in results)
    doubted = sum(r["doubted"] for r in results)
    print(f"\nreal model, two honest hosts: 200 checks, {passed} passed, {doubted} doubted, {failed} failed, "
          f"{sum(r['inconclusive'] for r in results)} inconclusive, {time.monotonic() - started:.1f} s")
    assert all(r["quarantined"] is None for r in results)
    assert failed == 0 and passed >= 180


def _llama_child(agent: Proc) -> psutil.Process:
    assert agent.popen is not None
    children = [c for c in psutil.Process(agent.popen.pid).children() if "llama-server" in c.name()]
    assert len(children) == 1
    return children[0]


def test_managed_llama_server_restarts_after_sigkill(real_pool: dict[str, Any]) -> None:
    agent: Proc = real_pool["agents"][0]
    child = _llama_child(agent)
    seen = len(agent.events())
    os.kill(child.pid, signal.SIGKILL)
    agent.wait_event("llama_server.died", after=seen, timeout=10)
    wait_models(real_pool["coordinator"].url, {MODEL: 1}, timeout=10)  # the coordinator was told
    agent.wait_event("llama_server.ready", after=seen, timeout=60)
    wait_models(real_pool["coordinator"].url, {MODEL: 2}, timeout=15)
    assert _llama_child(agent).pid != child.pid
    for _ in range(4):
        assert greedy(real_pool["client"], max_tokens=4).choices[0].finish_reason == "length"


def test_no_orphan_llama_server_on_any_exit(procs: Processes) -> None:
    if find_llama_server() is None:
        pytest.skip("llama-server not installed")
    coordinator = procs.coordinator()
    for how in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        agent = procs.agent(
            coordinator.url, "llamacpp", None, f"exit-{how.name}", "--managed", "--model", SHORT,
            env=MANAGED_ENV, timeout=120,
        )
        wait_models(coordinator.url, {MODEL: 1}, timeout=60)
        child = _llama_child(agent)
        agent.signal(how)
        assert agent.popen is not None
        agent.popen.wait(15)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(child.pid) and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not psutil.pid_exists(child.pid) or child.status() == psutil.STATUS_ZOMBIE, how
        wait_models(coordinator.url, {MODEL: 0})
