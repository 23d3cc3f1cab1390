"""Judging a sampled answer against the model's own distribution: pure, no I/O.

A sampled answer cannot equal another sample, so it is scored token by token with a
trusted host's next-token log-probabilities (the top ``k`` at each prefix of the
answer; :mod:`trust.scoring` asks for them). Three kinds of evidence, each against one
way of cheating:

- **dependence on the prompt**, over the answer's opening: the mean of
  ``log p(token | the request's prompt, answer so far) - log p(token | a neutral prompt,
  answer so far)``. Raw likelihood is not enough (once junk is in the prefix a model
  continues it, so junk scores as likely); an honest answer is about *its* prompt,
  another question's answer, lorem ipsum or a canned refusal is not;
- **no implausible stretch**, over the whole answer (up to ``scan_tokens``): the share
  of its tokens within the top ``k``, and the longest run of tokens outside it. An
  honest opening padded with junk, or junk spliced into an answer, shows a run where
  the junk begins;
- **an ending the model could have written**: where the host said it stopped, the
  model's probability of stopping there (at most what the listed tokens leave over).
  An answer cut short mid-sentence ends where the model would not.

A token outside the top ``k`` is given the least listed log-probability (an upper
bound on its own). The answer is split into the model's tokens by the candidates
themselves (the longest listed token that begins the rest of the answer; else a
word or a character: the model would not have written it anyway).

One answer is weak evidence (an honest sample may be unlikely here and there): the
verdict is graded (``PASS``, ``DOUBT``, ``FAIL``) and the checker decides over several.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

TopK = list[tuple[str, float]]  # candidates for the next token: text, log-probability
Verdict = Literal["pass", "doubt", "fail"]
PASS: Verdict = "pass"
DOUBT: Verdict = "doubt"
FAIL: Verdict = "fail"

_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+", re.UNICODE)
_SPECIAL = re.compile(r"^<\|?/?[\w.-]*\|?>$|^</s>$|^\[/?[A-Z_]+\]$")  # an end-of-turn token's text


@dataclass(frozen=True, slots=True)
class JudgePolicy:
    """What an honest answer shows: each measure has a level below which the answer is
    in doubt and one below which it fails (every figure is a ``check_*`` config option;
    the defaults come from scripts/calibrate_checks.py on the real model)."""

    opening_tokens: int = 8  # tokens over which the dependence on the prompt is measured
    scan_tokens: int = 256  # tokens of the answer scored at most (the rest is not looked at)
    pass_dependence: float = 0.0  # mean log-ratio over the opening; below: a doubt
    fail_dependence: float = -0.6  # below: not about the prompt at all
    doubt_hit_rate: float = 0.9  # share of scanned tokens within the top k
    min_hit_rate: float = 0.75
    doubt_miss_run: int = 2  # consecutive tokens outside the top k
    max_miss_run: int = 8
    doubt_end: float = 0.15  # the model's chance of stopping where the host stopped
    min_end: float = 0.005


@dataclass(frozen=True, slots=True)
class Next:
    """The model's view of the next token at one prefix: its top candidates, and
    whether its own (greedy) choice was to stop there."""

    top: TopK
    stopped: bool = False

    @property
    def floor(self) -> float:
        """The most an unlisted token can weigh."""
        return min((lp for _, lp in self.top), default=-30.0)

    def end_chance(self) -> float:
        """An upper bound on the probability of ending here: what the listed ordinary
        tokens leave over (an end-of-turn token is not always listed, nor named alike)."""
        if self.stopped:
            return 1.0
        listed = sum(math.exp(lp) for text, lp in self.top if text and not _SPECIAL.match(text.strip()))
        return max(0.0, 1.0 - listed)


def step(rest: str, view: Next) -> tuple[str, float | None]:
    """The next token of ``rest`` as the model would split it, and its log-probability
    (None: outside the top candidates; the piece is then a word or a character)."""
    best: tuple[str, float] | None = None
    for text, lp in view.top:
        if text and rest.startswith(text) and (best is None or len(text) > len(best[0])):
            best = (text, lp)
    if best is not None:
        return best
    match = _PIECE.match(rest)
    return (match.group(0) if match else rest[:1]), None


@dataclass(slots=True)
class Evidence:
    """What scoring one answer found."""

    dependence: list[float] = field(default_factory=list)  # per opening token: prompt minus neutral
    hits: int = 0
    scanned: int = 0
    miss_run: int = 0  # the longest run of tokens outside the top k
    end: float | None = None  # the chance of stopping where the host stopped; None: not judged
    complete: bool = False  # the whole answer was scanned

    @property
    def mean_dependence(self) -> float:
        return sum(self.dependence) / len(self.dependence) if self.dependence else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.scanned if self.scanned else 1.0

    def summary(self) -> dict[str, float | int | None]:
        return {"dependence": round(self.mean_dependence, 3), "hit_rate": round(self.hit_rate, 3),
                "miss_run": self.miss_run, "end": None if self.end is None else round(self.end, 4),
                "scanned": self.scanned}


class Tally:
    """Builds :class:`Evidence` one token at a time (the scoring loop feeds it)."""

    def __init__(self) -> None:
        self.evidence = Evidence()
        self._run = 0

    def scored(self, logprob: float | None) -> None:
        e = self.evidence
        e.scanned += 1
        if logprob is None:
            self._run += 1
            e.miss_run = max(e.miss_run, self._run)
        else:
            e.hits += 1
            self._run = 0

    def opening(self, prompted: float, neutral: float) -> None:
        self.evidence.dependence.append(prompted - neutral)


def weigh(view: Next, logprob: float | None) -> float:
    """A token's log-probability as scored: its own when listed, else the floor."""
    return view.floor if logprob is None else logprob


def judge(evidence: Evidence, policy: JudgePolicy) -> Verdict:
    """The verdict on one answer: a failure where any measure is past its failing level,
    a doubt where any is past its doubtful one."""
    if evidence.scanned == 0 and evidence.end is None:
        return PASS  # nothing to judge
    end = 1.0 if evidence.end is None else evidence.end
    dependence = evidence.mean_dependence if evidence.dependence else policy.pass_dependence
    if (evidence.miss_run >= policy.max_miss_run or evidence.hit_rate < policy.min_hit_rate
            or end < policy.min_end or dependence < policy.fail_dependence):
        return FAIL
    if (evidence.miss_run >= policy.doubt_miss_run or evidence.hit_rate < policy.doubt_hit_rate
            or end < policy.doubt_end or dependence < policy.pass_dependence):
        return DOUBT
    return PASS
