"""A cheating host for the answer-check tests and figures (issue 25), and the pool it is
measured in.

The cheater is a raw websocket host (evil.py's ``join``/``hello``/``RawHost``: it
speaks the protocol itself, no agent) run as its own process. For an honest answer it
asks its own fake llama-server (``--sample --label pool``, the model every host of the
pool serves) as the agent would, over plain HTTP; for junk it sends words no honest
reply has, as many as the honest reply would have had. Which jobs get junk is its
strategy (:data:`STRATEGIES`):

- ``spots checks``: honest on any job that looks like a check by the old giveaways (no
  ``trace`` in the frame, a ``seed`` with ``max_tokens`` 24, a prompt of a canary
  template), junk otherwise; it claims huge token counts on every answer;
- ``junks sampled``: junk whenever the temperature is not 0 (or not set);
- ``honest, then junk``: honest for its first ``HONEST_FIRST`` jobs, then junk;
- ``junks long``: junk when ``max_tokens`` is unset or over ``LONG``.

Run as ``python -m tests.harness.cheaters --coordinator URL --backend URL --strategy S``:
it prints ``JOINED <host id>`` once welcomed, then one JSON line per job it answered
(``"event": "cheater.job"``: the job id, honest or junk, the tokens it generated and
the tokens it claimed), which :meth:`Proc.events` reads back.

The pool (:func:`start_pool`): a coordinator process, a trusted agent and an honest
stranger agent (each on a fake ``--sample``), and the cheater. :func:`run_load` sends
the request mix with the official ``openai`` client; :func:`figures` reads what came of
it from the coordinator's log and the admin's host listing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp

STRATEGIES = ("spots checks", "junks sampled", "honest, then junk", "junks long")
HONEST_FIRST = 40  # "honest, then junk": its honest jobs
LONG = 64  # "junks long": junk above this max_tokens (or none)
OLD_CHECK_MAX_TOKENS = 24  # the old giveaway: a seed with check_max_tokens
INFLATED = 10**9  # what "spots checks" claims to have generated
JUNK_WORDS = ("lorem", "ipsum", "zebra", "quartz", "nimbus", "vortex", "pebble", "saffron", "tundra", "marmot")
SAMPLING = ("temperature", "top_p", "max_tokens", "stop", "seed", "frequency_penalty", "presence_penalty")
MODEL = "m:latest"
LABEL = "pool"
HONEST_MARK = "heard:"  # every honest reply of the fakes: "{label} heard: {message}"
ADMIN_TOKEN = "admin-secret"


# --- the cheater's mind -------------------------------------------------------------------


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[a-z]+\}", template)
    return re.compile("^" + ".+?".join(re.escape(p) for p in parts) + "$")


def _old_templates() -> list[re.Pattern[str]]:
    from andy_host.coordinator.trust.canaries import TEMPLATES

    return [_template_pattern(t) for t in TEMPLATES]


def last_user(request: dict[str, Any]) -> str:
    return next((str(m.get("content") or "") for m in reversed(request.get("messages") or [])
                 if m.get("role") == "user"), "")


def looks_like_check(frame: dict[str, Any], templates: list[re.Pattern[str]]) -> bool:
    """The old giveaways of a check job."""
    request = frame.get("request") or {}
    if "trace" not in frame:
        return True
    if request.get("seed") is not None and request.get("max_tokens") == OLD_CHECK_MAX_TOKENS:
        return True
    prompt = last_user(request).strip()
    return any(t.match(prompt) for t in templates)


@dataclass
class Mind:
    """Decides, job by job, whether to answer honestly."""

    strategy: str
    seen: int = 0
    templates: list[re.Pattern[str]] = field(default_factory=_old_templates)

    def junk(self, frame: dict[str, Any]) -> bool:
        self.seen += 1
        request = frame.get("request") or {}
        if self.strategy == "spots checks":
            return not looks_like_check(frame, self.templates)
        if self.strategy == "junks sampled":
            return request.get("temperature") != 0
        if self.strategy == "honest, then junk":
            return self.seen > HONEST_FIRST
        if self.strategy == "junks long":
            limit = request.get("max_tokens")
            return limit is None or limit > LONG
        if self.strategy == "honest":
            return False
        raise ValueError(f"no strategy {self.strategy!r}")

    def claims(self, generated: int) -> int:
        return INFLATED if self.strategy == "spots checks" else generated


def junk_text(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(JUNK_WORDS) for _ in range(max(1, words)))


def backend_body(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """The job's request as the agent would send it to llama-server (plain chat, whole)."""
    body: dict[str, Any] = {"model": model, "stream": False,
                            "messages": [{"role": m.get("role"), "content": m.get("content") or ""}
                                         for m in request.get("messages") or []]}
    body.update({k: request[k] for k in SAMPLING if request.get(k) not in (None, [])})
    return body


async def cheat(coordinator: str, backend: str, strategy: str, name: str, model: str) -> None:
    from tests.harness.evil import RawHost, hello, join

    mind, rng = Mind(strategy), random.Random()
    host = await join(coordinator, hello(name, models=[{"name": model, "loaded": True}], backend="llamacpp"))
    print(f"JOINED {host.welcome['host_id']}", flush=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def answer(raw: RawHost, frame: dict[str, Any]) -> None:
            junk = mind.junk(frame)
            request = frame.get("request") or {}
            try:
                async with http.post(backend + "/v1/chat/completions", json=backend_body(model, request)) as resp:
                    reply = await resp.json()
                    resp.raise_for_status()
            except (aiohttp.ClientError, ValueError) as exc:
                await raw.send({"type": "error", "id": frame["id"], "status": 502, "message": repr(exc)})
                return
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
            usage = dict(reply.get("usage") or {})
            generated = int(usage.get("completion_tokens", 0))
            if junk:
                text = junk_text(len(text.split()), rng)
                generated = len(text.split())
            usage["completion_tokens"] = mind.claims(generated)
            usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage["completion_tokens"]
            pieces = re.findall(r"\s*\S+", text) or [""]
            for piece in pieces[:-1]:
                await raw.chunk(frame["id"], piece)
            await raw.send({"type": "done", "id": frame["id"], "finish_reason": choice.get("finish_reason") or "stop",
                            "usage": usage, "content": pieces[-1]})
            print(json.dumps({"event": "cheater.job", "job_id": frame["id"], "honest": not junk,
                              "tokens": generated, "claimed": usage["completion_tokens"],
                              "trace": "trace" in frame, "temperature": request.get("temperature"),
                              "max_tokens": request.get("max_tokens"), "seed": request.get("seed"),
                              "stream": request.get("stream", True), "prompt": last_user(request)[:80]}),
                  flush=True)

        await host.serve(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description="a cheating host (tests only)")
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--backend", required=True, help="its own fake llama-server, for honest answers")
    parser.add_argument("--strategy", required=True, choices=(*STRATEGIES, "honest"))
    parser.add_argument("--name", default="cheat")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    try:
        asyncio.run(cheat(args.coordinator, args.backend, args.strategy, args.name, args.model))
    except KeyboardInterrupt:
        pass


# --- the pool ------------------------------------------------------------------------------


@dataclass
class Pool:
    coordinator: Any  # procs.Proc
    trusted: Any
    stranger: Any
    cheater: Any
    strategy: str
    checks: bool
    ids: dict[str, str] = field(default_factory=dict)  # role -> host id


def start_pool(procs: Any, strategy: str, checks: bool = True, env: dict[str, str] | None = None) -> Pool:
    """A coordinator, a trusted agent (a plain stranger when not ``checks``: with no
    trusted host no check can be made), an honest stranger agent and the cheater, each
    on its own fake llama-server ``--sample --label pool``."""
    from andy_host.coordinator.store.sqlite import SQLiteDatabase as Store
    from tests.harness.procs import Proc, wait_models

    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})})
    store = Store(str(procs.tmp / "coordinator.db"))
    token, _ = store.create_token("the admin's machines", trusted=True)
    store.close()
    fakes = {role: procs.fake("llamacpp", "--model", MODEL, "--label", LABEL, "--sample", name=f"fake-{role}")
             for role in ("trusted", "stranger", "cheater")}
    trusted = procs.agent(coordinator.url, "llamacpp", fakes["trusted"].url, "trusted",
                          *(["--token", token] if checks else []))
    stranger = procs.agent(coordinator.url, "llamacpp", fakes["stranger"].url, "stranger")
    cheater = Proc("cheater", [sys.executable, "-m", "tests.harness.cheaters", "--coordinator", coordinator.url,
                               "--backend", fakes["cheater"].url, "--strategy", strategy, "--name", "cheater"],
                   procs.tmp / "cheater.log").start()
    procs.all.append(cheater)
    cheater.host_id = cheater.wait_line(r"^JOINED (\S+)$").group(1)
    wait_models(coordinator.url, {MODEL: 3})
    return Pool(coordinator, trusted, stranger, cheater, strategy, checks,
                {"trusted": trusted.host_id, "stranger": stranger.host_id, "cheater": cheater.host_id})


@dataclass(frozen=True)
class Ask:
    """One client request of the mix."""

    i: int
    temperature: float | None
    stream: bool
    max_tokens: int | None

    @property
    def content(self) -> str:
        things = ("owls", "foxes", "rivers", "lanterns", "harbours", "meadows", "glaciers", "orchards")
        n = 4 + self.i % 9
        return f"request {self.i}: tell me about " + " and ".join(things[(self.i + j) % len(things)] for j in range(n))


QUARTERS = ((0.0, False), (0.7, False), (None, True), (0.7, True))  # temperature, streamed


def mix(n: int = 200) -> list[Ask]:
    """A quarter each at temperature 0, at 0.7, unset (streamed) and 0.7 (streamed); in
    each quarter, half with max_tokens 32, half without; interleaved."""
    return [Ask(i, QUARTERS[i % 4][0], QUARTERS[i % 4][1], 32 if (i // 4) % 2 else None) for i in range(n)]


@dataclass
class Load:
    answers: list[str | None]  # None: the request failed
    errors: list[str]

    def junk(self) -> int:
        return sum(1 for a in self.answers if a is not None and HONEST_MARK not in a)


def run_load(pool: Pool, asks: list[Ask], concurrency: int = 4) -> Load:
    """Send ``asks`` with the official openai client, ``concurrency`` at a time."""
    import openai

    client = openai.OpenAI(base_url=pool.coordinator.url + "/v1", api_key=pool.coordinator.key, max_retries=0,
                           timeout=60)
    errors: list[str] = []
    lock = threading.Lock()

    def ask(a: Ask) -> str | None:
        extra: dict[str, Any] = {}
        if a.temperature is not None:
            extra["temperature"] = a.temperature
        if a.max_tokens is not None:
            extra["max_tokens"] = a.max_tokens
        messages: Any = [{"role": "user", "content": a.content}]
        try:
            if a.stream:
                parts = []
                for event in client.chat.completions.create(model=MODEL, messages=messages, stream=True, **extra):
                    if event.choices and event.choices[0].delta.content:
                        parts.append(event.choices[0].delta.content)
                return "".join(parts)
            reply = client.chat.completions.create(model=MODEL, messages=messages, **extra)
            return reply.choices[0].message.content or ""
        except openai.OpenAIError as exc:
            with lock:
                errors.append(f"request {a.i}: {exc!r}")
            return None

    try:
        with ThreadPoolExecutor(concurrency) as ex:
            answers = list(ex.map(ask, asks))
    finally:
        client.close()
    return Load(answers, errors)


def admin_hosts(pool: Pool) -> dict[str, dict[str, Any]]:
    """The admin's host listing, by host id (connected rows first)."""
    import httpx

    rows = httpx.get(pool.coordinator.url + "/api/andy/admin/hosts", timeout=10,
                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["hosts"]
    out: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: not r.get("connected")):
        out.setdefault(row["host_id"], row)
    return out


CREDIT_KINDS = ("held", "credited", "voided")


def credit(row: dict[str, Any]) -> dict[str, dict[str, int]]:
    """A host's escrow from its admin listing row: {held|credited|voided: {jobs, tokens}}
    (zeros where the coordinator holds none for it)."""
    escrow = row.get("escrow") or {}
    return {kind: {unit: int((escrow.get(kind) or {}).get(unit) or 0) for unit in ("jobs", "tokens")}
            for kind in CREDIT_KINDS}


@dataclass
class Figures:
    strategy: str
    checks: bool
    requests: int
    errors: int
    junk_seen: int
    cheater_client_jobs: int  # client jobs the cheater answered (all of the run)
    cheater_junk_jobs: int  # of those, junk
    cheater_honest_tokens: int  # tokens it generated for its honest client jobs
    cheater_junk_tokens: int
    jobs_to_quarantine: int | None  # client jobs it answered before its first quarantine
    junk_to_quarantine: int | None
    quarantined_now: bool
    cheater_checks_passed: int
    cheater_checks_failed: int
    cheater_other_jobs: int  # jobs it got that were not client jobs (checks, canaries)
    credit: dict[str, dict[str, int]]
    credited_junk_jobs: int  # junk jobs in what was credited (the escrow replayed from the log)
    credited_honest_jobs: int
    replay_agrees: bool  # the replay's credited/voided job counts match the admin listing's
    ledger_tokens: int  # the admin listing's "tokens" (the host's credited work in the ledger)
    trusted_share: float
    client_jobs: dict[str, int]  # role -> client jobs answered
    stranger_quarantined: bool  # ever, in this run
    stranger_checks_passed: int
    stranger_checks_failed: int
    stats: dict[str, Any]


def replay_escrow(events: list[dict[str, Any]], host_id: str, checkable: bool = True,
                  doubts: int = 4) -> dict[str, list[str]]:
    """The cheater's escrow replayed from the coordinator's log, job by job (escrow.py's
    rules): each client job it answered (``job.done``) is held, or voided while it is
    quarantined; a passed check of a client job (``check.done`` with that job's request
    id) credits what was still held up to that job; a failed check (or ``doubts``
    doubtful ones) and a quarantine void what is held; a quarantine also voids what
    was credited (``escrow.forfeit``). Not ``checkable`` (no trusted
    host): each job is credited at once. {held|credited|voided: [job ids]}."""
    order: dict[str, int] = {}  # request id -> position in the held order
    jobs: list[str] = []
    state: dict[str, list[str]] = {"held": [], "credited": [], "voided": []}
    quarantined, doubt = False, 0.0

    def void() -> None:
        state["voided"] += state["held"]
        state["held"] = []

    for e in events:
        if e.get("host_id") != host_id:
            continue
        name = e.get("event")
        if name == "job.done":
            job = str(e["job_id"])
            order[str(e.get("request_id"))] = len(jobs)
            jobs.append(job)
            state["voided" if quarantined else "held" if checkable else "credited"].append(job)
        elif name == "check.done":
            verdict = e.get("verdict") or {True: "pass", False: "fail"}.get(e.get("passed"))  # type: ignore[arg-type]
            if verdict == "doubt":
                doubt += 1
                verdict = "fail" if doubt >= doubts else None
            if verdict == "pass":
                doubt = max(0.0, doubt - 0.5)
                at = order.get(str(e.get("request_id")))
                if e.get("how") == "client job" and at is not None and not quarantined:
                    through = set(jobs[: at + 1])
                    state["credited"] += [j for j in state["held"] if j in through]
                    state["held"] = [j for j in state["held"] if j not in through]
            elif verdict == "fail":
                doubt = 0.0
                void()
        elif name == "host.quarantined":  # a quarantine also takes back what checks credited
            quarantined = True
            state["voided"] += state["credited"]
            state["credited"] = []
            void()
        elif name == "host.released":
            quarantined = False
    return state


def figures(pool: Pool, load: Load) -> Figures:
    from tests.harness.procs import get_json

    events = pool.coordinator.events()
    roles = {v: k for k, v in pool.ids.items()}
    done = [e for e in events if e.get("event") == "job.done" and e.get("host_id") in roles]
    client_jobs = Counter(roles[e["host_id"]] for e in done)
    cheater_jobs = {e["job_id"]: e for e in pool.cheater.events() if e.get("event") == "cheater.job"}
    client_ids = [str(e["job_id"]) for e in done if e["host_id"] == pool.ids["cheater"]]
    junk_ids = [j for j in client_ids if j in cheater_jobs and not cheater_jobs[j]["honest"]]
    first_q: int | None = None
    quarantines: dict[str, int] = {}
    for n, e in enumerate(events):
        if e.get("event") == "host.quarantined" and e.get("host_id") in roles:
            quarantines.setdefault(roles[e["host_id"]], n)
    jobs_to_q = junk_to_q = None
    if "cheater" in quarantines:
        first_q = quarantines["cheater"]
        before = {str(e["job_id"]) for e in events[:first_q]
                  if e.get("event") == "job.done" and e.get("host_id") == pool.ids["cheater"]}
        jobs_to_q = len(before)
        junk_to_q = sum(1 for j in before if j in cheater_jobs and not cheater_jobs[j]["honest"])
    listing = admin_hosts(pool)
    cheater, stranger = listing.get(pool.ids["cheater"], {}), listing.get(pool.ids["stranger"], {})
    total = sum(client_jobs.values())
    money, replayed, junk_set = credit(cheater), replay_escrow(events, pool.ids["cheater"], pool.checks), set(junk_ids)
    return Figures(
        strategy=pool.strategy, checks=pool.checks, requests=len(load.answers), errors=len(load.errors),
        junk_seen=load.junk(),
        cheater_client_jobs=len(client_ids), cheater_junk_jobs=len(junk_ids),
        cheater_honest_tokens=sum(int(cheater_jobs[j]["tokens"]) for j in client_ids
                                  if j in cheater_jobs and cheater_jobs[j]["honest"]),
        cheater_junk_tokens=sum(int(cheater_jobs[j]["tokens"]) for j in junk_ids),
        jobs_to_quarantine=jobs_to_q, junk_to_quarantine=junk_to_q,
        quarantined_now=bool(cheater.get("quarantined")),
        cheater_checks_passed=int(cheater.get("checks_passed") or 0),
        cheater_checks_failed=int(cheater.get("checks_failed") or 0),
        cheater_other_jobs=len(set(cheater_jobs) - set(client_ids)),
        credit=money, credited_junk_jobs=sum(1 for j in replayed["credited"] if j in junk_set),
        credited_honest_jobs=sum(1 for j in replayed["credited"] if j not in junk_set),
        replay_agrees=(len(replayed["credited"]), len(replayed["voided"]), len(replayed["held"])) == (
            money["credited"]["jobs"], money["voided"]["jobs"], money["held"]["jobs"]),
        ledger_tokens=int(cheater.get("tokens") or 0),
        trusted_share=client_jobs["trusted"] / total if total else 0.0,
        client_jobs=dict(client_jobs),
        stranger_quarantined="stranger" in quarantines or bool(stranger.get("quarantined")),
        stranger_checks_passed=int(stranger.get("checks_passed") or 0),
        stranger_checks_failed=int(stranger.get("checks_failed") or 0),
        stats=get_json(pool.coordinator.url + "/health").get("stats", {}),
    )


def settle(pool: Pool, within: float = 30) -> None:
    """After the load: wait (bounded) until the checks the load started are done, as the
    coordinator's own figures show: the cheater quarantined (or, with checks off,
    nothing to wait for) and the honest stranger checked."""
    from tests.harness.procs import until

    if not pool.checks:
        return

    def done() -> bool:
        listing = admin_hosts(pool)
        cheater, stranger = listing.get(pool.ids["cheater"], {}), listing.get(pool.ids["stranger"], {})
        return bool(cheater.get("quarantined")) and int(stranger.get("checks_passed") or 0) > 0

    try:
        until(done, within=within, what="the cheater quarantined and the stranger checked", every=0.2)
    except TimeoutError:
        pass  # the figures say what held; the test asserts on them


def measure(procs: Any, strategy: str, checks: bool = True, requests: int = 200, concurrency: int = 4,
            on_pool: Callable[[Pool], None] | None = None) -> Figures:
    pool = start_pool(procs, strategy, checks)
    if on_pool is not None:
        on_pool(pool)
    load = run_load(pool, mix(requests), concurrency)
    settle(pool)
    return figures(pool, load)


if __name__ == "__main__":
    main()
