"""Scoring an answer on a trusted host: the walk over its tokens that :mod:`trust.judge`
weighs. No network here: ``ask`` (the checker's) runs one next-token job on a trusted
host and returns its view, so this loop is tested with any model behind it.

Each step asks for the next token's top-k after the request's messages and the answer
so far (a continuation of the assistant's partial answer, one token, temperature 0);
over the opening, the same after a neutral prompt; after the whole answer (when the
host said it stopped), whether the model would stop there. Cost in backend work: one
prompt evaluation of the new tokens (a backend that caches prompts, as llama-server
and Ollama do, reuses the prefix) and one generated token per step: about the
answer's own cost, plus ``opening_tokens`` + 1 steps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.trust.judge import Evidence, JudgePolicy, Next, Tally, step, weigh
from andy_host.protocol import ChatRequest, Message

Ask = Callable[[list[Message]], Awaitable[Next | None]]

def judge_policy(config: CoordinatorConfig) -> JudgePolicy:
    return JudgePolicy(
        opening_tokens=config.check_opening_tokens, scan_tokens=config.check_scan_tokens,
        pass_dependence=config.check_pass_dependence, fail_dependence=config.check_fail_dependence,
        doubt_hit_rate=config.check_doubt_hit_rate, min_hit_rate=config.check_min_hit_rate,
        doubt_miss_run=config.check_doubt_miss_run, max_miss_run=config.check_max_miss_run,
        doubt_end=config.check_doubt_end, min_end=config.check_min_end,
    )


NEUTRAL = "Say something."  # the neutral question: an answer that fits it as well fits no prompt in particular


def plain_text_chat(request: ChatRequest) -> bool:
    """Can an answer to ``request`` be scored: plain text chat (no tools, no schema: a
    grammar or a tool's template changes what the model may write), not a continuation."""
    return (not request.tools and request.response_format is None and not request.continuation
            and bool(request.messages) and request.messages[-1].role != "assistant")


def neutral_messages(request: ChatRequest) -> list[Message]:
    """The request's system messages and the neutral question."""
    return [*(m for m in request.messages if m.role == "system"), Message("user", NEUTRAL)]


def with_answer(messages: list[Message], partial: str) -> list[Message]:
    return [*messages, Message("assistant", partial)] if partial else list(messages)


def listed(view: Next, piece: str) -> float | None:
    return next((lp for text, lp in view.top if text == piece), None)


async def score(ask: Ask, request: ChatRequest, answer: str, finish: str, policy: JudgePolicy) -> Evidence | None:
    """The evidence on ``answer`` to ``request`` (None when the trusted host failed a step).

    The opening first, with the request's prompt and then the neutral one (each
    prompt's steps in a row, so a backend's prompt cache reuses the prefix), then the
    rest of the answer. It stops as soon as the answer has failed (an opening not about
    the prompt, a run of ``max_miss_run`` tokens the model would not write): junk is
    judged in a few steps, and its host quarantined sooner."""
    tally, prompt = Tally(), list(request.messages)
    walk = _Walk(ask, prompt, answer, tally)
    opening = await walk.steps(min(policy.opening_tokens, policy.scan_tokens), policy.max_miss_run)
    if opening is None:
        return None
    neutral = neutral_messages(request)
    for start, piece, prompted in opening:
        other = await ask(with_answer(neutral, answer[:start]))
        if other is None:
            return None
        tally.opening(prompted, weigh(other, listed(other, piece)))
    evidence = tally.evidence
    if evidence.mean_dependence >= policy.fail_dependence and evidence.miss_run < policy.max_miss_run:
        if await walk.steps(policy.scan_tokens - evidence.scanned, policy.max_miss_run) is None:
            return None
    evidence.complete = walk.pos >= len(answer)
    if evidence.complete:
        evidence.end = await _ending(ask, prompt, answer, finish, request.max_tokens, evidence.scanned)
    return evidence


class _Walk:
    """Along the answer, one token at a time, with the request's prompt."""

    def __init__(self, ask: Ask, prompt: list[Message], answer: str, tally: Tally) -> None:
        self.ask, self.prompt, self.answer, self.tally = ask, prompt, answer, tally
        self.pos = 0

    async def steps(self, most: int, max_miss_run: int) -> list[tuple[int, str, float]] | None:
        """Up to ``most`` more tokens (fewer at the end, or once a run of misses fails
        the answer): each one's start, text and weight; None when a step failed."""
        walked = list[tuple[int, str, float]]()
        answer, evidence = self.answer, self.tally.evidence
        while self.pos < len(answer) and len(walked) < most and evidence.miss_run < max_miss_run:
            view = await self.ask(with_answer(self.prompt, answer[:self.pos]))
            if view is None:
                return None
            piece, logprob = step(answer[self.pos:], view)
            walked.append((self.pos, piece, weigh(view, logprob)))
            self.tally.scored(logprob)
            self.pos += len(piece)
        return walked


async def _ending(
    ask: Ask, prompt: list[Message], answer: str, finish: str, max_tokens: int | None, tokens: int,
) -> float | None:
    """The chance the answer ends where it does: the model's, where the host said it
    stopped; 0 where it said it ran out of ``max_tokens`` well short of them."""
    if finish == "length":
        return 0.0 if max_tokens is not None and tokens * 2 < max_tokens else None
    if finish != "stop":
        return None
    view = await ask(with_answer(prompt, answer))
    return None if view is None else view.end_chance()
