"""How much the coordinator believes a host: measured work, strikes, checks, quarantine.

No claim a host makes is taken as is:

- **Work is measured** from what the coordinator relayed (characters and chunks). A
  host's reported ``completion_tokens`` stands only when it is plausible for that text
  (at most ``MAX_TOKENS_PER_CHAR`` tokens per character and at least one per
  ``MAX_CHARS_PER_TOKEN`` characters); otherwise an estimate from the text stands
  and the host gets a strike. What a host generated before it failed mid-answer (the
  ``tokens`` its chunks carry) is believed under the same rule, else counted at the
  fewest tokens that can spell the text (:func:`generated_tokens`): the host that
  continues is asked for the rest of ``max_tokens``, never less.
- **Errors are evidence**: a host that rejects a request another host then answers
  gets a strike; so does an answer past its size bound.
- **Answers are checked** on a trusted host (see checks.py): a temperature-0 answer
  against the trusted host's answer to the same request (the comparison tolerates
  honest differences between hardware, :func:`similar`), any other against the
  model's own distribution (judge.py), which gives a graded verdict.

Strikes and failed checks raise a host's *suspicion*; passed checks lower it. A
suspect host gets a smaller share of routing; past ``quarantine_score`` it is
quarantined: no client jobs, only checks, until it passes ``release_after`` checks in a
row or the admin releases it. A host that fails a check is quarantined at once;
doubtful verdicts add up (each pass takes half of one off), and ``doubts`` of
them count as a failure. Everything here is
pure; the relay and the checker call it and act on what it returns.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from andy_host.coordinator.trust.judge import DOUBT, FAIL, PASS, Verdict

MAX_TOKENS_PER_CHAR = 4  # a CJK character or an emoji can take several byte tokens
MAX_CHARS_PER_TOKEN = 32  # no tokenizer's tokens are longer, in practice
SLACK_TOKENS = 16  # tokens that print nothing (special tokens, a held-back UTF-8 tail)
CHARS_PER_TOKEN_ESTIMATE = 4  # the estimate that stands when a host's count does not

STRIKE = 1.0
FAILED_CHECK = 3.0
PASSED_CHECK = -1.0
PASS_AFTER_DOUBT = 0.5  # what a pass takes off the doubt: a host that cheats on half its jobs still adds up


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    quarantine_score: float = 6.0
    release_after: int = 3  # checks passed in a row that end a quarantine
    doubts: int = 4  # doubt (a leaky count of doubtful verdicts) that counts as a failed check
    suspect_share: float = 0.5  # routing weight of a host with a score, per point: 1 / (1 + share * score)


@dataclass(slots=True)
class HostTrust:
    """One host's standing, kept by id across its reconnects."""

    score: float = 0.0
    strikes: int = 0
    checks_passed: int = 0
    checks_failed: int = 0
    passed_in_a_row: int = 0
    doubt: float = 0.0  # doubtful verdicts, less half a point per pass since (a leaky count)
    checks_doubted: int = 0
    jobs_since_check: int = 0
    quarantined: str | None = None  # why, in the coordinator's words
    last_reason: str | None = None

    @property
    def in_doubt(self) -> bool:
        """Suspicion or a doubtful verdict: every job is checked until it clears."""
        return self.score > 0 or self.doubt > 0

    @property
    def verified(self) -> bool:
        return self.checks_passed > 0 and self.quarantined is None

    def weight(self, policy: TrustPolicy) -> float:
        """Share of routing, from 1 (no suspicion) down."""
        return 1.0 / (1.0 + policy.suspect_share * self.score)


def least_tokens(chars: int) -> int:
    """A lower bound on the tokens ``chars`` characters take in any tokenizer (no token
    is longer than ``MAX_CHARS_PER_TOKEN`` characters)."""
    return chars // MAX_CHARS_PER_TOKEN


def plausible_tokens(reported: int, chars: int) -> bool:
    """Could ``reported`` tokens have spelled ``chars`` characters?"""
    return least_tokens(chars) <= reported <= MAX_TOKENS_PER_CHAR * chars + SLACK_TOKENS


def measured_tokens(reported: int | None, chars: int, chunks: int) -> tuple[int, bool]:
    """Tokens to believe for ``chars`` characters relayed in ``chunks`` chunks, and
    whether the host's own count was plausible."""
    estimate = max(chunks, math.ceil(chars / CHARS_PER_TOKEN_ESTIMATE)) if chars else 0
    if reported is None:
        return estimate, True
    if plausible_tokens(reported, chars):
        return reported, True
    return estimate, False


def generated_tokens(reported: int, chars: int) -> int:
    """Tokens a host generated for ``chars`` characters it relayed: its own count where
    plausible, else the fewest tokens that can spell them (at most what it really
    generated, so what a continuation is given of ``max_tokens`` is never too little)."""
    if plausible_tokens(reported, chars):
        return reported
    return math.ceil(chars / MAX_CHARS_PER_TOKEN)


def strike(trust: HostTrust, policy: TrustPolicy, reason: str) -> bool:
    """Count a strike; True when it put the host in quarantine just now."""
    trust.strikes += 1
    return _add(trust, policy, STRIKE, f"strike: {reason}")


def checked(trust: HostTrust, policy: TrustPolicy, verdict: Verdict) -> str | None:
    """Count a check's verdict; returns "quarantined" or "released" when that changed.
    A failure quarantines at once (the checks are calibrated to fail no honest answer;
    what is less certain is a doubt)."""
    trust.jobs_since_check = 0
    if verdict == DOUBT:
        trust.checks_doubted += 1
        trust.doubt += 1.0
        if trust.doubt < policy.doubts:
            return None
        verdict = FAIL
    if verdict == PASS:
        trust.doubt = max(0.0, trust.doubt - PASS_AFTER_DOUBT)
        trust.checks_passed += 1
        trust.passed_in_a_row += 1
        trust.score = max(0.0, trust.score + PASSED_CHECK)
        if trust.quarantined is not None and trust.passed_in_a_row >= policy.release_after:
            trust.quarantined = None
            trust.score = 0.0
            return "released"
        return None
    trust.checks_failed += 1
    trust.passed_in_a_row = 0
    trust.doubt = 0.0
    points = max(FAILED_CHECK, policy.quarantine_score - trust.score)
    return "quarantined" if _add(trust, policy, points, "failed an answer check") else None


def _add(trust: HostTrust, policy: TrustPolicy, points: float, reason: str) -> bool:
    trust.score += points
    trust.last_reason = reason
    if trust.quarantined is None and trust.score >= policy.quarantine_score:
        trust.quarantined = (f"{trust.checks_failed} failed answer checks and {trust.strikes} strikes "
                             f"(last: {reason})")
        return True
    return False


def release(trust: HostTrust) -> None:
    """The admin's word: the host is back in good standing."""
    trust.quarantined = None
    trust.score = 0.0
    trust.passed_in_a_row = 0


_WORDS = re.compile(r"\w+", re.UNICODE)
PREFIX_WORDS = 8  # honest hosts agree on the first words; they may drift later
PREFIX_AGREEMENT = 0.5
SIMILARITY = 0.6  # of the first COMPARED_CHARS characters
COMPARED_CHARS = 200


def similar(reference: str, answer: str) -> bool | None:
    """Does ``answer`` agree with a trusted host's ``reference`` to the same deterministic
    request? Different hardware, kernels and batch sizes make greedy decoding drift
    after a while, so only the start is compared: most of the first words the same, or
    the first characters mostly alike. None when the reference has no words to compare."""
    ref_words = _WORDS.findall(reference.lower())[:PREFIX_WORDS]
    words = _WORDS.findall(answer.lower())[:PREFIX_WORDS]
    if not ref_words:
        return None
    same = 0
    for a, b in zip(ref_words, words, strict=False):
        if a != b:
            break
        same += 1
    compared = min(len(ref_words), len(words))  # an honest answer may stop sooner ("No." for "No, 419 is ...")
    if same and same / max(compared, 1) >= PREFIX_AGREEMENT:
        return True
    ratio = difflib.SequenceMatcher(None, reference[:COMPARED_CHARS].lower(), answer[:COMPARED_CHARS].lower()).ratio()
    return ratio >= SIMILARITY
