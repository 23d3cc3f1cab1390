"""Shared by the fake backends: deterministic generation, stop strings, embeddings, and
(``--sample``) a model that samples around that generation, with a distribution
consistent with its sampling (see ``sample``)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


def generate(label: str, messages: list[dict[str, str]], max_tokens: int | None, stop: list[str]) -> tuple[list[str], str]:
    """Tokens of a deterministic reply and its finish reason ("stop" or "length")."""
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    text = f"{label} heard: {last}"
    reason = "stop"
    for s in stop:
        cut = text.find(s)
        if cut != -1:
            text = text[:cut]
    tokens = re.findall(r"\s*\S+|\s+$", text)
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, reason = tokens[:max_tokens], "length"
    return tokens, reason


def continuation(
    label: str, messages: list[dict[str, str]], max_tokens: int | None, stop: list[str], echo: bool
) -> tuple[list[str], str]:
    """Continue a final assistant message: the rest of the same deterministic reply,
    preceded by the prefix itself when the backend echoes it (llama.cpp does)."""
    prefix = messages[-1].get("content", "")
    tokens, reason = generate(label, messages[:-1], None, stop)
    full = "".join(tokens)
    rest = full[len(prefix):] if full.startswith(prefix) else full
    rest_tokens = re.findall(r"\s*\S+|\s+$", rest)
    if max_tokens is not None and len(rest_tokens) > max_tokens:
        rest_tokens, reason = rest_tokens[:max_tokens], "length"
    return ([prefix] if echo else []) + rest_tokens, reason


def embedding(text: str, dim: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 6) for b in digest[:dim]]


def serve(make_app: Callable[[argparse.Namespace], web.Application], parser: argparse.ArgumentParser) -> None:
    """Run the app on --port (0: a free one) and print ``PORT <n>`` once listening."""
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def main() -> None:
        runner = web.AppRunner(make_app(args), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        print(f"PORT {runner.addresses[0][1]}", flush=True)
        sys.stdout.flush()
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# --- tools, structured output, log probabilities, raw completion (both fakes) ------------


TOKENS = re.compile(r"\s*\S+|\s+$")


def last_words(text: str, n: int) -> str:
    return " ".join(re.findall(r"[\w'-]+", text)[-n:])


def tool_call(tools: list[dict[str, Any]], messages: list[dict[str, Any]], choice: Any) -> tuple[str, dict[str, Any]] | None:
    """The call a tool-capable model makes: to the first tool (the one named by the
    choice, when given), when the choice requires a call or the user asks to use a tool;
    never right after a tool result. Its string arguments are the user's last word."""
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    if choice != "required" and "tool" not in last.lower():
        return None
    function = tools[0].get("function") or {}
    properties = (function.get("parameters") or {}).get("properties") or {}
    word = last_words(last, 1)
    return function.get("name", ""), {k: (word if (v or {}).get("type", "string") == "string" else 1)
                                      for k, v in properties.items()}


def structured(schema: dict[str, Any] | None, label: str, messages: list[dict[str, Any]]) -> str:
    """A JSON document, as a grammar-constrained model writes it: an object with each
    property of the schema ("answer" without one), strings from the user's words."""
    last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    properties = (schema or {}).get("properties") or {"answer": {"type": "string"}}
    values = {"string": last_words(last, 1) or label, "integer": len(last.split()), "number": 1.5, "boolean": True}
    return json.dumps({k: values.get((v or {}).get("type", "string"), None) for k, v in properties.items()})


def tool_result_reply(label: str, messages: list[dict[str, Any]]) -> str:
    return f"{label} read the tool's result: {messages[-1].get('content', '')}"


def token_logprobs(tokens: list[str], top: int) -> list[dict[str, Any]]:
    """Log probabilities as llama-server (and Ollama) give them: each token, and its
    alternatives (the token itself first)."""
    out = []
    for i, token in enumerate(tokens):
        logprob = -0.05 * (i % 7)
        alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
        alternatives += [{"token": f" alt{j}", "logprob": logprob - 1.0 - j, "bytes": list(f" alt{j}".encode())}
                         for j in range(max(0, top - 1))]
        out.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                    "top_logprobs": alternatives[:top]})
    return out


def complete(label: str, prompt: str, max_tokens: int | None, stop: list[str]) -> tuple[list[str], str]:
    """A raw completion: the prompt continued with a deterministic text that names the
    prompt's last words (no chat template: nothing about roles)."""
    text = f" and then {label} continued after '{last_words(prompt, 3)}'."
    for s in stop:
        cut = text.find(s)
        if cut != -1:
            text = text[:cut]
    tokens = TOKENS.findall(text)
    if max_tokens is not None and max_tokens > 0 and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


# --- a model that samples (--sample, both fakes) ------------------------------------------
#
# The reply above is the model's greedy answer. Under --sample the fakes are a sampling
# model around it: from token SAMPLED_FROM on, each reply token may be replaced by its
# variant (p ~0.3, at temperature > 0). Its distribution, given the prompt and the answer
# so far, is consistent with that sampling: aligned with the reply (each token as itself
# or its variant), the next token is the reply's (p 0.7) or its variant (p ~0.3); at the
# reply's end, the end-of-generation token; not aligned (junk, another prompt's answer),
# generic tokens with flat log-probabilities, which the answer's own words are not.

SAMPLED_FROM = 2  # "<label> heard:" is the opening every answer shares
P_TOKEN = math.log(0.7)
P_VARIANT = math.log(0.3) - 0.001  # a little less, so the listed tokens never sum past 1
P_SURE = math.log(0.99)  # the only candidate the model has in mind (and the rest)
FILLER_LOGPROB = -8.0  # " alt0", " alt1", ...: the tail, each one less
GENERIC = (" the", " and", " a", ".", ",", " of", " to", " in", " is", " it",
           " that", " for", " with", " on", " as", " was", " I", " be", " this", "\n")
GENERIC_LOGPROB = math.log(1 / len(GENERIC))  # flat: the model has no idea what comes next
NUCLEUS = 0.95  # llama-server's default top_p: sampling never reaches the fillers
UNALIGNED_CAP = 16  # a continuation of junk runs to a limit (length), it never ends
EOS = ""  # llama-server's text for the end-of-generation token (not rendered: special)
EOS_ID = 2  # its id (SmolLM2's <|im_end|>, as observed)

SYNONYMS = {
    "heard": "listened", "big": "large", "large": "big", "small": "little", "little": "small",
    "quick": "fast", "fast": "quick", "happy": "glad", "glad": "happy", "red": "crimson",
    "blue": "azure", "green": "emerald", "purple": "violet", "dog": "hound", "cat": "kitten",
    "house": "home", "home": "house", "road": "street", "street": "road", "tonight": "today",
    "today": "tonight", "quietly": "softly", "softly": "quietly", "answer": "reply", "reply": "answer",
    "is": "was", "was": "is", "are": "were", "were": "are",
}


def variant(token: str) -> str | None:
    """The sampled alternative of a reply token: a synonym from a small table, else the
    word with another ending (-ing/-ed, a plural's -s dropped or an -s added); a token
    without a letter gets a "!". Same leading whitespace and trailing punctuation, never
    the token itself, never whitespace inside; None for a whitespace-only token."""
    lead = token[: len(token) - len(token.lstrip())]
    rest = token[len(lead):]
    if not rest:
        return None
    m = re.match(r"([A-Za-z]+)(.*)", rest, re.S)
    if m is None:
        return lead + rest + "!"
    word, tail = m.groups()
    low = word.lower()
    if low in SYNONYMS:
        new = SYNONYMS[low]
        new = new.capitalize() if word[0].isupper() else new
    elif low.endswith("ing") and len(low) > 5:
        new = word[:-3] + "ed"
    elif low.endswith("ed") and len(low) > 4:
        new = word[:-2] + "ing"
    elif low.endswith("s") and len(low) > 2:
        new = word[:-1]
    else:
        new = word + "s"
    return lead + new + tail


def reply(label: str, messages: list[dict[str, Any]], stop: list[str]) -> tuple[list[str], bool]:
    """The greedy reply to ``messages`` (generate's, unbounded), and whether a stop
    string cut it (then the model never reached its end-of-generation token)."""
    tokens, _ = generate(label, messages, None, [])
    cut, _ = generate(label, messages, None, stop)
    return cut, cut != tokens


def options(tokens: list[str], i: int) -> list[tuple[str, float]]:
    """What the model may write as reply token ``i``: the token, and from SAMPLED_FROM on its variant."""
    alt = variant(tokens[i]) if i >= SAMPLED_FROM else None
    return [(tokens[i], P_TOKEN), (alt, P_VARIANT)] if alt else [(tokens[i], P_SURE)]


def align(text: str, tokens: list[str]) -> tuple[int, str] | None:
    """Where ``text`` (the answer so far) stands in the reply: ``(i, partial)``, ``i``
    reply tokens written (each as itself or its variant), then ``partial``, a proper
    beginning of token ``i`` or its variant; None when ``text`` is not this reply."""
    pos, i = 0, 0
    while pos < len(text):
        if i >= len(tokens):
            return None
        rest = text[pos:]
        whole = [t for t, _ in options(tokens, i)
                 if rest.startswith(t) and (len(rest) == len(t) or rest[len(t)].isspace())]
        if whole:
            pos, i = pos + len(whole[0]), i + 1
            continue
        if any(t.startswith(rest) for t, _ in options(tokens, i)):
            return i, rest
        return None
    return i, ""


def generic(text: str) -> list[tuple[str, float]]:
    """The next token of something this model would not have written: common words,
    nearly flat (which ones lead shifts with the length of the text)."""
    shift = len(TOKENS.findall(text)) % len(GENERIC)
    order = GENERIC[shift:] + GENERIC[:shift]
    return [(t, round(GENERIC_LOGPROB - 0.01 * j, 6)) for j, t in enumerate(order)]


def next_token(tokens: list[str], text: str) -> list[tuple[str, float]]:
    """The model's next-token candidates after ``text``, most likely first (EOS: the end)."""
    at = align(text, tokens)
    if at is None:
        return generic(text)
    i, partial = at
    if i == len(tokens):
        return [(EOS, P_SURE)]
    if partial:
        rests = [(t[len(partial):], lp) for t, lp in options(tokens, i) if t.startswith(partial)]
        return rests if len(rests) > 1 else [(rests[0][0], P_SURE)]
    return options(tokens, i)


def candidates(dist: list[tuple[str, float]], top: int) -> list[tuple[str, float]]:
    """The top ``top`` of a distribution, its tail filled with " alt<j>" tokens far below."""
    fillers = [(f" alt{j}", FILLER_LOGPROB - j) for j in range(max(0, top - len(dist)))]
    return (dist + fillers)[:top]


def pick(dist: list[tuple[str, float]], temperature: float, rng: random.Random) -> str:
    """Greedy at temperature 0, else a draw within the nucleus (top_p NUCLEUS)."""
    if temperature <= 0:
        return dist[0][0]
    nucleus, mass = [], 0.0
    for token, lp in dist:
        nucleus.append((token, math.exp(lp)))
        mass += math.exp(lp)
        if mass >= NUCLEUS:
            break
    r = rng.random() * mass
    for token, p in nucleus:
        r -= p
        if r < 0:
            return token
    return nucleus[-1][0]


@dataclass
class Sampled:
    """A sampled generation: the tokens written, why it ended, and at each step the
    distribution the token was drawn from (``steps[i]`` for ``tokens[i]``; one more when
    the model drew its end-of-generation token, ``eos``)."""

    tokens: list[str]
    reason: str
    steps: list[list[tuple[str, float]]]
    eos: bool


def sample(label: str, messages: list[dict[str, Any]], max_tokens: int | None, stop: list[str],
           temperature: float, seed: int | None) -> Sampled:
    """Generate as the sampling model: the reply to the messages (continuing a final
    assistant message, which is not repeated here), token by token from ``next_token``."""
    prefix = ""
    if messages and messages[-1].get("role") == "assistant":
        prefix, messages = str(messages[-1].get("content") or ""), messages[:-1]
    tokens, cut = reply(label, messages, stop)
    rng = random.Random(seed) if seed is not None and seed >= 0 else random.Random()
    text, out, steps = prefix, [], []
    aligned = align(prefix, tokens) is not None
    while True:
        if max_tokens is not None and max_tokens >= 0 and len(out) >= max_tokens:
            return Sampled(out, "length", steps, False)
        if not aligned and len(out) >= UNALIGNED_CAP:
            return Sampled(out, "length", steps, False)
        dist = next_token(tokens, text)
        token = pick(dist, temperature, rng)
        steps.append(dist)
        if token == EOS:
            if cut:  # a stop string ended it: the end-of-generation token was never drawn
                steps.pop()
            return Sampled(out, "stop", steps, not cut)
        out.append(token)
        text += token


def token_id(token: str) -> int:
    return EOS_ID if token == EOS else 3 + int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "big") % 49149


def sampled_logprobs(s: Sampled, top: int, ids: bool, eos: bool) -> list[dict[str, Any]]:
    """``logprobs`` entries of a sampled generation, one per generated token (with
    ``eos``, the end-of-generation token's too, as llama-server lists it; Ollama does
    not): ``{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}``, with
    ``id``s as llama-server gives them (``ids``)."""
    def entry(token: str, lp: float) -> dict[str, Any]:
        out: dict[str, Any] = {"id": token_id(token)} if ids else {}
        out.update({"token": token, "bytes": list(token.encode()), "logprob": lp})
        return out

    chosen = s.tokens + ([EOS] if s.eos and eos else [])
    entries = []
    for token, dist in zip(chosen, s.steps, strict=False):
        lp = dict(dist).get(token, FILLER_LOGPROB)
        entries.append({**entry(token, lp), "top_logprobs": [entry(t, p) for t, p in candidates(dist, top)]})
    return entries
