"""Canaries are recent client requests replayed (trust/canaries.py): kept within their
bounds whatever clients send, and never a request the host itself answered."""

from __future__ import annotations

import random

from andy_host.coordinator.pool.work import chat_work
from andy_host.coordinator.trust.canaries import Traffic, canary
from andy_host.protocol import ChatRequest, Message


def request(text: str, seed: int | None = None) -> ChatRequest:
    return ChatRequest(messages=[Message("user", text)], temperature=0.7, seed=seed)


def test_huge_prompts_cannot_grow_the_kept_traffic_past_its_characters() -> None:
    traffic = Traffic(kept=64, chars=10_000)
    for i in range(200):
        r = request(f"{i} " + "x" * 3000)
        traffic.saw(chat_work("m", r), r, "a")
    kept = traffic._recent["m"]
    assert sum(s.chars for s in kept) <= 10_000 and traffic._total == sum(s.chars for s in kept)
    assert kept[-1].request.messages[0].content.startswith("199 ")  # the newest is kept
    too_big = request("y" * 20_000)
    traffic.saw(chat_work("m", too_big), too_big, "a")
    assert all(s.request is not too_big for s in kept)


def test_models_and_requests_per_model_are_bounded() -> None:
    traffic = Traffic(kept=3, chars=10**9)
    for model in ("a", "b", "c", "d"):
        for i in range(10):
            r = request(f"{model}{i}")
            traffic.saw(chat_work(model, r), r, "h")
    assert list(traffic._recent) == ["b", "c", "d"] and all(len(q) == 3 for q in traffic._recent.values())


def test_a_canary_is_never_a_request_the_host_answered_itself() -> None:
    traffic, rng = Traffic(kept=64, chars=10**6), random.Random(1)
    own = request("mine", seed=5)
    traffic.saw(chat_work("m", own), own, "cheater")
    assert canary(rng, traffic, "m", "cheater", 24).messages[0].content != "mine"  # a template instead
    other = request("theirs", seed=5)
    traffic.saw(chat_work("m", other), other, "honest")
    replay = canary(rng, traffic, "m", "cheater", 24)
    assert replay.messages[0].content == "theirs" and replay.seed != 5 and replay.temperature == 0.7
