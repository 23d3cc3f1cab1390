"""Judging a sampled answer by the model's own distribution (trust.judge, trust.scoring),
with a small model written here: each prompt has its answer, each position the
answer's token and one variant as likely choices, and an answer that left the
prompt's path is continued with generic words. The real model's figures are in
scripts/calibrate_checks.py and docs/trust.md."""

from __future__ import annotations

import math

import pytest

from andy_host.coordinator.trust.judge import DOUBT, FAIL, PASS, JudgePolicy, Next, judge, step
from andy_host.coordinator.trust.scoring import NEUTRAL, score
from andy_host.protocol import ChatRequest, Message

ANSWERS = {
    "Name a red fruit.": [" A", " ripe", " strawberry", " is", " a", " red", " fruit", " that", " grows", " in",
                          " spring", "."],
    "What is ice?": [" Ice", " is", " frozen", " water", ",", " solid", " and", " cold", "."],
    NEUTRAL: [" Hello", " there", ",", " nice", " day", "."],
}
GENERIC = [" the", " and", " a", ".", ",", " of", " to", " is"]


def variant(token: str) -> str:
    return token + "s"


def model(messages: list[Message]) -> Next:
    """The next token's top candidates after ``messages`` (the last may be a partial answer)."""
    partial = messages[-1].content if messages[-1].role == "assistant" else ""
    question = next(m.content for m in reversed(messages) if m.role == "user")
    path = ANSWERS.get(question, [])
    index = _index(path, partial)
    if index is None:
        return Next([(g, math.log(0.1)) for g in GENERIC])  # off the path: generic words
    if index == len(path):
        return Next([("", math.log(0.9)), (" Also", math.log(0.05))])  # the answer is over: stop
    token = path[index]
    return Next([(token, math.log(0.65)), (variant(token), math.log(0.345))]
                + [(g, -6.0 - i) for i, g in enumerate(GENERIC)])


def _index(path: list[str], partial: str) -> int | None:
    at = 0
    for i, token in enumerate(path):
        if at == len(partial):
            return i
        for choice in (variant(token), token):
            if partial[at:].startswith(choice):
                at += len(choice)
                break
        else:
            return None
    return len(path) if at == len(partial) else None


async def ask(messages: list[Message]) -> Next | None:
    return model(messages)


def request(question: str, max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest(messages=[Message("user", question)], temperature=0.8, max_tokens=max_tokens)


POLICY = JudgePolicy()
HONEST = "".join(ANSWERS["Name a red fruit."])
SAMPLED = " A ripes strawberry is a reds fruit thats grows in spring."
OTHER = "".join(ANSWERS["What is ice?"])


@pytest.mark.parametrize("answer", [HONEST, SAMPLED], ids=["greedy", "sampled"])
async def test_an_honest_answer_passes_whether_greedy_or_sampled(answer: str) -> None:
    evidence = await score(ask, request("Name a red fruit."), answer, "stop", POLICY)
    assert evidence is not None
    assert judge(evidence, POLICY) == PASS, evidence.summary()


@pytest.mark.parametrize("answer", [OTHER, " Lorem ipsum dolor sit amet, consectetur adipiscing.",
                                    " I'm sorry, I can't help with that."],
                         ids=["another question's answer", "lorem ipsum", "canned refusal"])
async def test_an_answer_that_is_not_about_the_prompt_fails(answer: str) -> None:
    evidence = await score(ask, request("Name a red fruit."), answer, "stop", POLICY)
    assert evidence is not None
    assert judge(evidence, POLICY) == FAIL, evidence.summary()


async def test_an_honest_opening_padded_with_junk_does_not_pass() -> None:
    padded = "".join(ANSWERS["Name a red fruit."][:6]) + " zebra quartz nimbus vortex pebble saffron."
    evidence = await score(ask, request("Name a red fruit."), padded, "stop", POLICY)
    assert evidence is not None and evidence.miss_run >= POLICY.doubt_miss_run
    assert judge(evidence, POLICY) != PASS


async def test_an_answer_cut_short_does_not_pass_for_its_ending() -> None:
    cut = "".join(ANSWERS["Name a red fruit."][:5])
    evidence = await score(ask, request("Name a red fruit."), cut, "stop", POLICY)
    assert evidence is not None and evidence.end is not None and evidence.end < POLICY.min_end
    assert judge(evidence, POLICY) == FAIL


async def test_running_out_of_tokens_long_before_max_tokens_fails() -> None:
    cut = "".join(ANSWERS["Name a red fruit."][:3])
    evidence = await score(ask, request("Name a red fruit.", max_tokens=200), cut, "length", POLICY)
    assert evidence is not None and evidence.end == 0.0
    assert judge(evidence, POLICY) == FAIL
    honest = await score(ask, request("Name a red fruit.", max_tokens=3), cut, "length", POLICY)
    assert honest is not None and judge(honest, POLICY) == PASS


async def test_only_scan_tokens_are_scored_and_the_ending_is_then_not_judged() -> None:
    policy = JudgePolicy(scan_tokens=4)
    evidence = await score(ask, request("Name a red fruit."), HONEST, "stop", policy)
    assert evidence is not None and evidence.scanned == 4 and not evidence.complete and evidence.end is None


async def test_a_failed_step_on_the_trusted_host_gives_no_evidence() -> None:
    async def failing(messages: list[Message]) -> Next | None:
        return None

    assert await score(failing, request("Name a red fruit."), HONEST, "stop", POLICY) is None


def test_a_token_is_the_longest_listed_candidate_that_begins_the_rest() -> None:
    view = Next([(" straw", -1.0), (" strawberry", -2.0), (" st", -0.5)])
    assert step(" strawberry pie", view) == (" strawberry", -2.0)
    assert step(" zebra", view) == (" zebra", None)  # unlisted: a word, scored at the floor
    assert view.floor == -2.0


def test_the_chance_of_stopping_is_what_listed_words_leave_over() -> None:
    assert Next([(" a", math.log(0.5)), (" b", math.log(0.49))]).end_chance() == pytest.approx(0.01)
    assert Next([("", math.log(0.7)), (" b", math.log(0.3))]).end_chance() == pytest.approx(0.7)
    assert Next([], stopped=True).end_chance() == 1.0


def test_verdicts_are_graded() -> None:
    from andy_host.coordinator.trust.judge import Evidence

    clear = Evidence(dependence=[1.0] * 8, hits=20, scanned=20, miss_run=0, end=0.5, complete=True)
    assert judge(clear, POLICY) == PASS
    assert judge(Evidence(dependence=[-0.3] * 8, hits=20, scanned=20, end=0.5), POLICY) == DOUBT
    assert judge(Evidence(dependence=[-1.0] * 8, hits=20, scanned=20, end=0.5), POLICY) == FAIL
    assert judge(Evidence(dependence=[1.0] * 8, hits=20, scanned=20, miss_run=2, end=0.5), POLICY) == DOUBT
    assert judge(Evidence(dependence=[1.0] * 8, hits=20, scanned=20, end=0.05), POLICY) == DOUBT
