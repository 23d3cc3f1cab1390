"""The bounds on an answer and on a request's time: one rule, for every path an answer comes by.

This module owns what an answer may be, whoever relays it: the relay holds a host's
answer to it as it relays it, and the replica that asked another to run a job (the
replica hop) holds what comes back to it again, with the very same :class:`Bound`
(a host's claims are worth no more for having come through another replica):

- **size**: at most :func:`answer_limit` characters (less when ``max_tokens`` is set),
  less what earlier hosts already sent; past it, :class:`Breach`;
- **tool calls** only for a request that offered tools: others are dropped (a strike);
- **log probabilities** only where asked, as many alternatives as asked
  (``asked_logprobs``), and no more than ``max_logprobs`` entries in all; past it,
  :class:`Breach`;
- **token counts** the relayed text supports: ``completion_tokens`` by
  ``measured_tokens``, ``prompt_tokens`` at most :func:`most_prompt_tokens` of the
  prompt's characters; a count it does not support is replaced (a strike).

Every bound broken calls the bound's ``strike`` with the reason, once: the relay strikes
the host; the replica that asked logs it (the replica that ran the job on its host struck
the host already, through its own relay and this same rule). A :class:`Breach` is a
``StreamBroken``: the client gets an explicit error, never a truncated success.

It owns the request's deadline too (:func:`request_deadline`): computed once, where a
request enters (the relay's or the federation's ``run``, or the internal endpoint from
the budget the asking replica sent), and passed down, never started again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.pool.work import Work, asked_logprobs, prompt_chars
from andy_host.coordinator.trust.standing import MAX_TOKENS_PER_CHAR, measured_tokens
from andy_host.errors import StreamBroken
from andy_host.protocol import ChatRequest, Chunk, Done, EmbedRequest, JobRequest

PROMPT_SLACK = 4096  # prompt tokens a chat template may add (a long system prompt in a Modelfile)
SIZE_BREACH = "the host's answer exceeded the pool's limit on answer size"

Strike = Callable[[str], None]  # told why, once for each bound broken


class Breach(StreamBroken):
    """A bound the answer broke: it cannot go on. ``reason`` is the strike's;
    ``failed`` says the host failed the job as well (an answer past its size)."""

    def __init__(self, message: str, reason: str, failed: bool = False) -> None:
        super().__init__(message)
        self.reason, self.failed = reason, failed


def request_deadline(config: CoordinatorConfig) -> float:
    """When a request that enters now must be over (the event loop's clock)."""
    return asyncio.get_running_loop().time() + config.request_timeout


def answer_limit(config: CoordinatorConfig, request: JobRequest) -> int:
    """Most characters of answer this request may get."""
    max_tokens = None if isinstance(request, EmbedRequest) else request.max_tokens
    if max_tokens is not None:
        return min(config.max_answer_chars, max(max_tokens * config.answer_chars_per_token, 4096))
    return config.max_answer_chars


def most_prompt_tokens(chars: int) -> int:
    """The most tokens a prompt of ``chars`` characters can be, chat template included."""
    return MAX_TOKENS_PER_CHAR * chars + PROMPT_SLACK


@dataclass(slots=True)
class Bound:
    """One answer (one host's part of it, or one replica's), held to the bounds as it comes."""

    request: JobRequest
    room: int  # characters of answer it may still send
    prompt: int  # characters of prompt
    max_logprobs: int
    strike: Strike
    chars: int = 0
    chunks: int = 0
    logprobs: int = 0

    @classmethod
    def of(cls, config: CoordinatorConfig, work: Work, strike: Strike, sent: int = 0) -> Bound:
        """The bound of ``work``'s answer, ``sent`` characters of which went out already."""
        return cls(work.request, answer_limit(config, work.request) - sent, prompt_chars(work),
                   config.max_logprobs, strike)

    def item(self, item: Chunk | Done) -> int | None:
        """Bound ``item`` (in place); a Done's completion tokens to believe, else None."""
        if isinstance(item, Chunk):
            self.chunk(item)
            return None
        return self.done(item)

    def chunk(self, chunk: Chunk) -> None:
        self._logprobs(chunk)
        self.chars += len(chunk.content)
        self.chunks += 1
        if self.chars > self.room:
            self._breach(SIZE_BREACH, "sent an answer past the size bound", failed=True)

    def done(self, done: Done) -> int:
        """Bound the end (in place): returns the completion tokens to believe."""
        self._logprobs(done)
        self._calls(done)
        return self._measure(done)

    def restart(self) -> None:
        """The answer starts over: nothing of it is counted any more."""
        self.chars = self.chunks = self.logprobs = 0

    def _breach(self, message: str, reason: str, failed: bool = False) -> None:
        self.strike(reason)
        raise Breach(message, reason, failed)

    def _logprobs(self, item: Chunk | Done) -> None:
        item.logprobs = asked_logprobs(self.request, item.logprobs)
        if item.logprobs is None:
            return
        self.logprobs += len(item.logprobs)
        if self.logprobs > self.max_logprobs:
            self._breach(f"the answer's log probabilities exceeded the pool's limit ({self.max_logprobs})",
                         "sent more log probabilities than the bound")

    def _calls(self, done: Done) -> None:
        """Tool calls only for a request that offered tools: others are a lie, dropped."""
        if done.tool_calls and not (isinstance(self.request, ChatRequest) and self.request.tools):
            self.strike("answered with tool calls a request without tools")
            done.tool_calls, done.finish_reason = [], "stop"
        elif done.finish_reason == "tool_calls" and not done.tool_calls:
            done.finish_reason = "stop"

    def _measure(self, done: Done) -> int:
        """Token counts the relayed text and the prompt support (in place)."""
        reported = done.usage.get("completion_tokens")
        tokens, plausible = measured_tokens(reported, self.chars, self.chunks)
        if not plausible:
            self.strike(f"reported {reported} tokens for {self.chars} characters")
        done.usage["completion_tokens"] = tokens
        prompt_tokens = done.usage.get("prompt_tokens")
        if prompt_tokens is not None and prompt_tokens > most_prompt_tokens(self.prompt):
            self.strike(f"reported {prompt_tokens} prompt tokens for {self.prompt} characters")
            done.usage["prompt_tokens"] = measured_tokens(None, self.prompt, 1)[0]
        return tokens
