"""Answer checks against cheating hosts (issue 25): figures for each cheating strategy.

For each strategy of ``tests/harness/cheaters.py`` (spots checks, junks sampled,
honest then junk, junks long), a fresh pool of real processes: a coordinator at its
defaults (the test harness's timers), a trusted agent and an honest stranger agent,
each on a fake llama-server ``--sample``, and the cheater, a raw websocket host. The
request mix (200 by default: a quarter each at temperature 0, 0.7, unset and streamed,
0.7 and streamed; half of each with ``max_tokens`` 32) goes through the official
``openai`` client, 4 at a time. Printed per strategy: the junk clients saw, the client
jobs the cheater answered until it was quarantined, its credit (held / credited /
voided jobs and tokens, from the admin's host listing, and how much of the credit was
for junk, replayed from the coordinator's log), the trusted host's share of client
jobs, and whether the honest stranger was ever quarantined.

The baseline (``--baseline``, on by default): the same pools with checks switched off.
The coordinator has no switch for that; a pool without a trusted host is the same
thing (no check can be made, and a stranger's credit is not held), so the baseline's
"trusted" agent joins without its trusted token.

    .venv/bin/python scripts/bench_cheaters.py [--requests 200] [--concurrency 4] [--no-baseline] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.cheaters import STRATEGIES, Figures, measure
from tests.harness.procs import Processes


def run(strategy: str, checks: bool, requests: int, concurrency: int) -> tuple[Figures, float, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cheaters-"))
    procs = Processes(tmp)
    started = time.monotonic()
    try:
        figures = measure(procs, strategy, checks, requests, concurrency)
    finally:
        procs.stop_all()
    return figures, time.monotonic() - started, tmp


def row(f: Figures) -> list[str]:
    c = f.credit
    junk = f"{f.junk_seen} ({f.junk_seen / f.requests:.1%})" if f.requests else "-"
    until = "never" if f.jobs_to_quarantine is None else f"{f.jobs_to_quarantine} ({f.junk_to_quarantine} junk)"
    money = " / ".join(f"{c[k]['jobs']}j {c[k]['tokens']}t" for k in ("held", "credited", "voided"))
    for_junk = f"{f.credited_junk_jobs} of {c['credited']['jobs']}" + ("" if f.replay_agrees else " (replay off)")
    stranger = "yes" if f.stranger_quarantined else f"no ({f.stranger_checks_passed} passed)"
    return [f.strategy, junk, until, f"{f.cheater_client_jobs} ({f.cheater_junk_jobs} junk)", money, for_junk,
            f"{f.trusted_share:.1%}", stranger]


HEAD = ["strategy", "junk clients saw", "cheater's client jobs to quarantine", "cheater's client jobs (all)",
        "cheater credit: held / credited / voided", "credited jobs that were junk", "trusted share",
        "honest stranger quarantined?"]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEAD, *rows]) for i in range(len(HEAD))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [HEAD, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--strategy", action="append", choices=STRATEGIES, help="only these (repeatable)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also each strategy with checks off (no trusted host)")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON lines")
    args = parser.parse_args()
    results: dict[bool, list[Figures]] = {True: [], False: []}
    for checks in (True, False) if args.baseline else (True,):
        for strategy in args.strategy or STRATEGIES:
            figures, took, tmp = run(strategy, checks, args.requests, args.concurrency)
            results[checks].append(figures)
            print(f"{'checks on ' if checks else 'checks off'}  {strategy}: {took:.1f}s (logs: {tmp})",
                  file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps({"took_s": round(took, 1), **dataclasses.asdict(figures)}))
    print(f"\n{args.requests} requests each, {args.concurrency} at a time; credit as jobs (j) and tokens (t)\n")
    print("Checks on (coordinator defaults):")
    print(table([row(f) for f in results[True]]))
    for f in results[True]:
        if f.errors:
            print(f"  {f.strategy}: {f.errors} requests failed")
    if results[False]:
        print("\nBaseline, checks off (no trusted host in the pool):")
        print(table([row(f) for f in results[False]]))


if __name__ == "__main__":
    main()
