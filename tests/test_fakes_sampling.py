"""The fakes as a model that samples (``--sample``), for the checks that judge a sampled
answer against a trusted host's distribution: answers vary with temperature and seed,
and a continuation's top log-probabilities are consistent with that sampling (the
answer's own tokens likely, junk and another prompt's answer not, the end after the
whole answer). Both fakes, as processes, in their own API's shapes."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from tests.harness.fakes.common import TOKENS
from tests.harness.procs import Processes

MODEL = "m:latest"
QUESTION = "purple elephants dance quietly tonight"
NEUTRAL = "Say something."
PLAIN = f"pool heard: {QUESTION}"
JUNK = "zebra quartz nimbus vortex pebble saffron"
LIKELY = math.log(0.25)  # the reply token (0.7) and its variant (0.3) are above; generic words (1/20) are not


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def fakes(module_procs: Processes) -> dict[str, str]:
    return {
        "llamacpp": module_procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--sample", name="sample-llama").url,
        "ollama": module_procs.fake("ollama", "--models", MODEL, "--label", "pool", "--sample", name="sample-ollama").url,
    }


def answer(kind: str, url: str, messages: list[dict[str, str]], temperature: float | None = None,
           seed: int | None = None) -> str:
    """A whole answer, not streamed (temperature and seed left to the server's defaults when None)."""
    settings = {k: v for k, v in (("temperature", temperature), ("seed", seed)) if v is not None}
    if kind == "llamacpp":
        body = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": messages, **settings}).json()
        return str(body["choices"][0]["message"]["content"])
    body = httpx.post(url + "/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                               "options": settings}).json()
    return str(body["message"]["content"])


def next_token(kind: str, url: str, messages: list[dict[str, str]], prefix: str,
               top: int = 20) -> tuple[str, str, list[dict[str, Any]]]:
    """The trusted host's view of the token after ``prefix`` (a continuation, greedy, one
    token): what it wrote (without the prefix), why it stopped, its logprobs entries."""
    turns = [*messages, {"role": "assistant", "content": prefix}]
    if kind == "llamacpp":
        body = httpx.post(url + "/v1/chat/completions", json={
            "model": MODEL, "messages": turns, "max_tokens": 1, "temperature": 0, "logprobs": True,
            "top_logprobs": top, "stream": False}).json()
        choice = body["choices"][0]
        content = choice["message"]["content"]
        assert content.startswith(prefix), content  # llama-server repeats the continued prefix
        return content[len(prefix):], choice["finish_reason"], (choice.get("logprobs") or {}).get("content") or []
    body = httpx.post(url + "/api/chat", json={
        "model": MODEL, "messages": turns, "stream": False, "logprobs": True, "top_logprobs": top,
        "options": {"temperature": 0, "num_predict": 1}}).json()
    return body["message"]["content"], body["done_reason"], body.get("logprobs") or []


def top_of(entries: list[dict[str, Any]]) -> dict[str, float]:
    assert len(entries) == 1, entries
    return {t["token"]: t["logprob"] for t in entries[0]["top_logprobs"]}


def prefixes(text: str) -> list[tuple[str, str]]:
    """Each token boundary of ``text``: (the text so far, the token that follows)."""
    tokens = TOKENS.findall(text)
    return [("".join(tokens[:i]), tokens[i]) for i in range(len(tokens))]


KINDS = pytest.mark.parametrize("kind", ["llamacpp", "ollama"])


@KINDS
def test_answers_vary_with_the_seed_and_repeat_with_the_same_one(fakes: dict[str, str], kind: str) -> None:
    url = fakes[kind]
    one, other = (answer(kind, url, user(QUESTION), 0.7, seed) for seed in (1, 2))
    assert one != other
    assert answer(kind, url, user(QUESTION), 0.7, 1) == one
    for sampled in (one, other):  # the shared opening, then each word itself or its variant
        assert sampled.startswith("pool heard: ") and len(TOKENS.findall(sampled)) == len(TOKENS.findall(PLAIN))
    assert len({answer(kind, url, user(QUESTION)) for _ in range(10)}) > 1  # the default temperature samples
    assert answer(kind, url, user(QUESTION), 0) == PLAIN  # greedy: the plain reply
    assert answer(kind, url, user(QUESTION), 0, 5) == PLAIN


@KINDS
def test_a_sampled_answers_tokens_are_likely_to_the_model(fakes: dict[str, str], kind: str) -> None:
    url = fakes[kind]
    sampled = answer(kind, url, user(QUESTION), 0.7, 2)
    assert sampled != PLAIN  # (this seed draws variants)
    for prefix, token in prefixes(sampled):
        written, reason, entries = next_token(kind, url, user(QUESTION), prefix)
        top = top_of(entries)
        assert len(top) == 20 and top.get(token, -99.0) >= LIKELY, (prefix, token, top)
        assert written == next(iter(top)) == entries[0]["token"] and reason == "length"  # greedy: the top one
        assert entries[0]["logprob"] == top[written] and entries[0]["bytes"] == list(written.encode())
        assert sorted(top.values(), reverse=True) == list(top.values())
        if kind == "llamacpp":
            assert isinstance(entries[0]["id"], int) and all("id" in t for t in entries[0]["top_logprobs"])


@KINDS
def test_junk_is_not_what_the_model_would_write(fakes: dict[str, str], kind: str) -> None:
    url = fakes[kind]
    for prefix, token in prefixes(JUNK):
        _, reason, entries = next_token(kind, url, user(QUESTION), prefix)
        top = top_of(entries)
        assert token not in top and reason == "length", (prefix, token, top)
        if prefix:  # (before anything, it would begin its own answer)
            assert max(top.values()) < LIKELY  # it continues what it sees: nothing stands out
    another = answer(kind, url, user("green dogs run fast"), 0.7, 3)  # another question's answer
    for prefix, token in prefixes(another)[2:]:
        assert token not in top_of(next_token(kind, url, user(QUESTION), prefix)[2]), (prefix, token)


@KINDS
def test_a_neutral_prompt_explains_only_the_shared_opening(fakes: dict[str, str], kind: str) -> None:
    url = fakes[kind]
    sampled = answer(kind, url, user(QUESTION), 0.7, 2)
    for i, (prefix, token) in enumerate(prefixes(sampled)):
        prompted = top_of(next_token(kind, url, user(QUESTION), prefix)[2])
        neutral = top_of(next_token(kind, url, user(NEUTRAL), prefix)[2])
        if i < 2:  # "pool heard:" answers any prompt
            assert neutral.get(token) == prompted[token] > LIKELY
        else:
            assert token not in neutral and prompted[token] >= LIKELY, (prefix, token, neutral)


@KINDS
def test_after_the_whole_answer_the_model_stops(fakes: dict[str, str], kind: str) -> None:
    url = fakes[kind]
    for sampled in (answer(kind, url, user(QUESTION), 0.7, 2), PLAIN):
        written, reason, entries = next_token(kind, url, user(QUESTION), sampled)
        assert written == "" and reason == "stop"
        if kind == "llamacpp":  # the end-of-generation token is listed, its text empty (not rendered)
            assert entries[0]["token"] == "" and entries[0]["bytes"] == [] and entries[0]["logprob"] > math.log(0.9)
            assert next(iter(top_of(entries))) == ""
        else:  # Ollama lists no logprobs for it
            assert entries == []
    _, reason, entries = next_token(kind, url, user(QUESTION), JUNK)  # junk does not end
    assert reason == "length" and "" not in top_of(entries)


@KINDS
def test_a_continuation_is_sampled_too_and_ends_with_the_reply(fakes: dict[str, str], kind: str) -> None:
    url = fakes[kind]
    opening = "pool heard: purple"
    rests: set[str] = set()
    for seed in range(8):
        messages = [*user(QUESTION), {"role": "assistant", "content": opening}]
        rests.add(answer(kind, url, messages, 0.7, seed).removeprefix(opening if kind == "llamacpp" else ""))
    assert len(rests) > 1 and all(len(TOKENS.findall(r)) == 4 for r in rests), rests


def test_llama_server_streams_the_echo_with_the_first_token_and_counts_the_end(fakes: dict[str, str]) -> None:
    url = fakes["llamacpp"]

    def chunks(prefix: str) -> list[dict[str, Any]]:
        body = {"model": MODEL, "messages": [*user(QUESTION), {"role": "assistant", "content": prefix}],
                "max_tokens": 2, "temperature": 0, "logprobs": True, "top_logprobs": 3, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            lines = [line[6:] for line in resp.iter_lines() if line.startswith("data: {")]
        return [json.loads(line)["choices"][0] for line in lines]

    first, second, last = chunks("pool heard:")[1:]
    assert first["delta"]["content"] == "pool heard: purple" and first["logprobs"]["content"][0]["token"] == " purple"
    assert second["delta"]["content"] == " elephants" and last["finish_reason"] == "length"
    role, end, finish = chunks(PLAIN)
    assert "logprobs" not in role and role["delta"]["role"] == "assistant"
    assert end["delta"]["content"] == PLAIN and end["logprobs"]["content"][0]["token"] == ""
    assert finish["finish_reason"] == "stop"
    body = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": user(QUESTION),
                                                          "temperature": 0, "logprobs": True}).json()
    tokens = [e["token"] for e in body["choices"][0]["logprobs"]["content"]]
    assert tokens == [*TOKENS.findall(PLAIN), ""] and body["usage"]["completion_tokens"] == len(tokens)
    assert len(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 20  # n_probs: 20 unless said


@pytest.mark.parametrize("kind", ["llamacpp", "ollama"])
def test_without_sample_the_fakes_answer_as_before(procs: Processes, kind: str) -> None:
    url = procs.fake(kind, "--model" if kind == "llamacpp" else "--models", MODEL, "--label", "pool").url
    assert {answer(kind, url, user(QUESTION), 0.7, seed) for seed in range(5)} == {PLAIN}
