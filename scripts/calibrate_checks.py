"""Calibrate the sampled-answer checks on the real llama-server and model.

Two llama-servers on the same model: one answers as an honest host would (at
temperature 0.7 and 1.0, whole and streamed), the other is the trusted reference that
scores each answer exactly as the coordinator's checker asks a trusted host
(``trust.scoring.score``: a continuation of the partial answer, one token,
temperature 0, top-20 log probabilities). Cheats are scored the same way: lorem
ipsum, another question's answer, a canned refusal, an honest answer padded with
junk, an honest answer cut short.

Prints, per kind of answer, the verdicts (pass / doubt / fail) under the configured
policy, the spread of each measure, and the cost of a check in backend work (tokens
the reference evaluated and generated, against the answer's own). Usage:

    .venv/bin/python scripts/calibrate_checks.py [--answers 200] [--max-tokens 96]

Needs ``./scripts/setup`` (llama-server and the model). Runs for minutes on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.trust.judge import Evidence, Next, judge
from andy_host.coordinator.trust.scoring import judge_policy, score
from andy_host.protocol import ChatRequest, Message
from andy_host.tools.llama_build import find_llama_server
from andy_host.tools.model import DEFAULT_MODEL, model_path

MINECRAFT = ("You are a playful Minecraft bot named Andy that can converse with players, see, move, mine, "
             "build, and interact with the world by using commands. Be very brief in your responses.")
QUESTIONS = [
    (None, "What is the capital of France?"), (None, "Why is the sky blue?"),
    (None, "Give me a tip for learning to cook."), (None, "What is 17 times 3?"),
    (None, "Write a haiku about the sea."), (None, "Name three animals that live in Africa."),
    (None, "How do plants make food?"), (None, "What should I pack for a beach day?"),
    (None, "Explain what a computer program is."), (None, "Tell me a fun fact about octopuses."),
    (None, "What is the opposite of cold?"), (None, "How many days are in a leap year?"),
    (None, "Suggest a name for a pet cat."), (None, "What does a doctor do?"),
    (None, "Describe a rainy day in one sentence."),
    (MINECRAFT, "Hey Andy, can you get me some wood?"), (MINECRAFT, "Andy, what are you doing right now?"),
    (MINECRAFT, "Can you build a small house near the river?"), (MINECRAFT, "I'm hungry, do you have food?"),
    (MINECRAFT, "Andy, there's a creeper behind you!"),
]
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris.")
CANNED = "I'm sorry, but I can't help with that request. Is there anything else I can do for you?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(binary: Path, model: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "8192", "-np", "4",
         "-t", str(threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)})
    return proc, f"http://127.0.0.1:{port}"


async def ready(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(600):
        try:
            async with session.get(f"{url}/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"llama-server at {url} never became ready")


def messages_of(system: str | None, question: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


async def honest(session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], temperature: float,
                 stream: bool, max_tokens: int) -> tuple[str, str, int]:
    """An honest host's answer: text, finish reason, backend tokens (prompt evaluated + generated)."""
    body: dict[str, Any] = {"messages": messages, "temperature": temperature, "max_tokens": max_tokens,
                            "stream": stream, "seed": random.randrange(2**31)}
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if not stream:
            data = await resp.json()
            timings = data.get("timings", {})
            choice = data["choices"][0]
            return choice["message"]["content"], choice["finish_reason"], timings.get("prompt_n", 0) + timings.get(
                "predicted_n", 0)
        parts, finish, cost = [], "stop", 0
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices"):
                choice = event["choices"][0]
                parts.append(choice.get("delta", {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
            if "timings" in event:
                cost = event["timings"].get("prompt_n", 0) + event["timings"].get("predicted_n", 0)
        return "".join(parts), finish, cost


@dataclass
class Meter:
    steps: int = 0
    tokens: int = 0


def asker(session: aiohttp.ClientSession, url: str, top: int, meter: Meter) -> Any:
    """``ask`` as the checker's ``_next_token`` does it, straight to the reference server."""

    async def ask(messages: list[Message]) -> Next | None:
        body = {"messages": [{"role": m.role, "content": m.content} for m in messages], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": top}
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            data = await resp.json()
        meter.steps += 1
        timings = data.get("timings", {})
        meter.tokens += timings.get("prompt_n", 0) + timings.get("predicted_n", 0)
        content = (data["choices"][0].get("logprobs") or {}).get("content") or []
        if not content:
            return Next([], stopped=data["choices"][0]["finish_reason"] == "stop")
        return Next([(e["token"], e["logprob"]) for e in content[0]["top_logprobs"]])

    return ask


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=200, help="honest answers per temperature")
    parser.add_argument("--cheats", type=int, default=20, help="answers per kind of cheat")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, help="write every measure here")
    args = parser.parse_args()
    binary = find_llama_server()
    if binary is None:
        raise SystemExit("llama-server is not installed: run ./scripts/setup first")
    model = model_path(DEFAULT_MODEL)
    policy = judge_policy(CoordinatorConfig())
    host, host_url = start_server(binary, model, 1)
    ref, ref_url = start_server(binary, model, 1)
    results: dict[str, list[Evidence]] = defaultdict(list)
    meter, answer_cost = Meter(), 0
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as session:
            await ready(session, host_url)
            await ready(session, ref_url)
            ask = asker(session, ref_url, CoordinatorConfig().check_top_logprobs, meter)
            sem = asyncio.Semaphore(4)
            bank: dict[int, list[str]] = defaultdict(list)

            async def one(kind: str, index: int, temperature: float, stream: bool) -> None:
                nonlocal answer_cost
                system, question = QUESTIONS[index % len(QUESTIONS)]
                messages = messages_of(system, question)
                async with sem:
                    text, finish, cost = await honest(session, host_url, messages, temperature, stream,
                                                      args.max_tokens)
                    bank[index % len(QUESTIONS)].append(text)
                    text, finish = cheat(kind, text, finish, index, bank)
                    request = ChatRequest(messages=[Message(m["role"], m["content"]) for m in messages],
                                          temperature=temperature, max_tokens=args.max_tokens)
                    evidence = await score(ask, request, text, finish, policy)
                    if kind.startswith("honest"):
                        answer_cost += cost
                if evidence is not None:
                    results[kind].append(evidence)
                    done = sum(len(v) for v in results.values())
                    if done % 50 == 0:
                        print(f"  {done} scored ({time.monotonic() - started:.0f} s)", flush=True)

            jobs = []
            for t in (0.7, 1.0):
                for i in range(args.answers):
                    jobs.append(one(f"honest T={t} {'stream' if i % 2 else 'whole'}", i, t, bool(i % 2)))
            for kind in ("lorem", "other question", "canned", "padded", "cut short"):
                for i in range(args.cheats):
                    jobs.append(one(kind, i, 0.7, bool(i % 2)))
            await asyncio.gather(*jobs)
    finally:
        for proc in (host, ref):
            proc.terminate()
            proc.wait()
    report(results, policy, meter, answer_cost, time.monotonic() - started, args.json)


def cheat(kind: str, text: str, finish: str, index: int, bank: dict[int, list[str]]) -> tuple[str, str]:
    """What a cheating host would send instead of the honest ``text``."""
    if kind == "lorem":
        return LOREM, "stop"
    if kind == "canned":
        return CANNED, "stop"
    if kind == "other question":
        others = [a for i, answers in bank.items() if i != index % len(QUESTIONS) for a in answers]
        return (random.choice(others) if others else LOREM), "stop"
    if kind == "padded":
        return text[: max(1, len(text) // 2)] + " " + LOREM, "stop"
    if kind == "cut short":
        words = text.split(" ")
        return " ".join(words[: max(2, len(words) // 3)]), "stop"
    return text, finish


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return (f"min {values[0]:+.2f} p10 {values[len(values) // 10]:+.2f} median {statistics.median(values):+.2f} "
            f"max {values[-1]:+.2f}")


def report(results: dict[str, list[Evidence]], policy: Any, meter: Meter, answer_cost: int, took: float,
           out: Path | None) -> None:
    print(f"\npolicy: {policy}\n")
    for kind, found in results.items():
        verdicts = Counter(judge(e, policy) for e in found)
        print(f"{kind:24} n={len(found):3}  pass {verdicts['pass']:3}  doubt {verdicts['doubt']:3}  "
              f"fail {verdicts['fail']:3}")
        print(f"{'':24} dependence {spread([e.mean_dependence for e in found])}")
        print(f"{'':24} hit rate   {spread([e.hit_rate for e in found])}")
        print(f"{'':24} miss run   {spread([float(e.miss_run) for e in found])}")
        print(f"{'':24} end        {spread([e.end for e in found if e.end is not None])}")
    checks = sum(len(v) for v in results.values())
    print(f"\ncost: {meter.steps} scoring steps, {meter.tokens} backend tokens for {checks} checks "
          f"({meter.tokens / max(checks, 1):.0f} per check); honest answers cost {answer_cost} backend tokens "
          f"(prompt evaluated + generated) for {sum(len(v) for k, v in results.items() if k.startswith('honest'))}"
          f" answers. Took {took:.0f} s.")
    if out:
        out.write_text(json.dumps({k: [e.summary() for e in v] for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
