"""Canaries: check jobs for hosts that have no client traffic to check (a new host, a
quarantined one), made to be told apart from client jobs by nothing in the frame.

A canary is a recent client request of the pool, replayed: the same messages and
sampling parameters, a seed drawn afresh where the client gave one (and none where it
gave none), a trace made as the coordinator makes request ids, never one the host
answered itself. The last ``check_traffic_kept`` plain chat requests per model are
kept, in memory only and at most ``check_traffic_chars`` characters of prompt in all,
never those of a key restricted to trusted hosts (its prompts may reach no stranger). With no traffic
yet, a short question from templates, shaped like a typical client's (no seed, a
temperature from 0.6 to 0.9, whole or streamed): a host can tell those apart only by
having seen no client job before, which is also what a new host is.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, replace

from andy_host.coordinator.pool.work import Work, prompt_chars
from andy_host.protocol import ChatRequest, Message

TEMPLATES = (
    "What is the capital of {country}? Answer in one word.",
    "Name one animal that lives in {place}.",
    "What is {a} plus {b}?",
    "Write one short sentence about {thing}.",
    "Translate the word '{word}' into French.",
    "What colour is {thing}?",
    "Give one synonym for the word '{adjective}'.",
    "Is {a} an even number? Answer yes or no.",
    "List three things you might find in {place}.",
    "Finish this sentence: The {thing} was",
)
FILLS = {
    "country": ("France", "Japan", "Italy", "Spain", "Germany", "Canada", "Egypt", "Brazil", "Kenya", "Norway"),
    "place": ("the ocean", "a forest", "the desert", "a city", "the mountains", "a farm", "a river", "a kitchen"),
    "thing": ("a banana", "the sky", "a fire truck", "grass", "a lemon", "snow", "a library", "a bicycle"),
    "word": ("house", "water", "friend", "book", "morning", "bread", "window", "garden"),
    "adjective": ("happy", "fast", "small", "bright", "quiet", "strong", "cold", "old"),
}


@dataclass(frozen=True, slots=True)
class _Seen:
    request: ChatRequest
    host_id: str  # the host that answered it: a canary for that host is another's request
    chars: int


class Traffic:
    """The pool's recent plain chat requests, by model: at most ``kept`` per model and
    ``kept`` models, and at most ``chars`` characters of prompt in all (oldest dropped),
    whatever size of prompts clients send."""

    def __init__(self, kept: int, chars: int) -> None:
        self.kept, self.chars = kept, chars
        self._recent: dict[str, deque[_Seen]] = {}
        self._total = 0

    def saw(self, work: Work, request: ChatRequest, host_id: str) -> None:
        """``host_id`` answered ``request`` (``work``'s, typed)."""
        size, model = prompt_chars(work), work.model
        if size > self.chars:
            return
        recent = self._recent.get(model)
        if recent is None:
            if len(self._recent) >= self.kept:  # bounded in models too
                self._drop(next(iter(self._recent)), everything=True)
            recent = self._recent[model] = deque()
        if len(recent) >= self.kept:
            self._drop(model)
        recent.append(_Seen(request, host_id, size))
        self._total += size
        while self._total > self.chars:
            self._drop(model if len(recent) > 1 else next(iter(self._recent)))

    def _drop(self, model: str, everything: bool = False) -> None:
        recent = self._recent[model]
        for _ in range(len(recent) if everything else 1):
            self._total -= recent.popleft().chars
        if not recent:
            del self._recent[model]

    def sample(self, rng: random.Random, model: str, host_id: str) -> ChatRequest | None:
        """A recent request of ``model`` that ``host_id`` did not answer itself (it would
        know a prompt it saw before)."""
        others = [seen.request for seen in self._recent.get(model, ()) if seen.host_id != host_id]
        return rng.choice(others) if others else None


def replayed(rng: random.Random, request: ChatRequest) -> ChatRequest:
    """``request`` as a canary: a fresh seed where it had one."""
    return replace(request, seed=None if request.seed is None else rng.randrange(2**31))


def from_template(rng: random.Random, max_tokens: int) -> ChatRequest:
    """A short, natural question, shaped like a typical client's request."""
    fills = {k: rng.choice(v) for k, v in FILLS.items()}
    prompt = rng.choice(TEMPLATES).format(a=rng.randrange(2, 500), b=rng.randrange(2, 500), **fills)
    return ChatRequest(messages=[Message("user", prompt)], temperature=round(rng.uniform(0.6, 0.9), 1),
                       max_tokens=max_tokens if rng.random() < 0.5 else None, stream=rng.random() < 0.5)


def canary(rng: random.Random, traffic: Traffic, model: str, host_id: str, max_tokens: int) -> ChatRequest:
    recent = traffic.sample(rng, model, host_id)
    return replayed(rng, recent) if recent is not None else from_template(rng, max_tokens)
