"""Answer checks a cheater cannot spot (issue 25): a pool of real processes (a
coordinator at its defaults, a trusted agent, an honest stranger agent, each on a fake
llama-server ``--sample``) and a cheating raw websocket host (tests/harness/cheaters.py),
given the 200-request mix through the official openai client, once per strategy.

The goals, for every strategy: clients see at most 10 % junk; the cheater is
quarantined; what it is credited is for honest answers only (none for junk: the escrow
replayed job by job from the coordinator's log, checked against the admin's figures);
the honest stranger is never quarantined and passes its checks. The figures themselves
(jobs to quarantine, the trusted host's share) are printed for the log and made a table
by scripts/bench_cheaters.py; nothing here times anything.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.harness.cheaters import STRATEGIES, measure
from tests.harness.procs import Processes

REQUESTS = 200
MOST_JUNK = 0.10  # of what clients got
SLACK_TOKENS = 16  # per job: the coordinator's measure of a plausible count may differ from the fake's


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_cheater_is_caught_before_clients_see_much_junk_and_keeps_no_credit_for_it(
    procs: Processes, strategy: str,
) -> None:
    # a host past probation takes its fair share; in probation at most a quarter: "honest, then junk"
    # needs more than 200 requests to reach its 40th job
    requests = 2 * REQUESTS if strategy == "honest, then junk" else REQUESTS
    f = measure(procs, strategy, requests=requests)
    print({k: v for k, v in dataclasses.asdict(f).items() if k != "stats"}, f.stats)
    assert f.errors == 0, "every client request is answered"
    # the honest stranger: checked, never quarantined
    assert not f.stranger_quarantined
    assert f.stranger_checks_passed >= 1 and f.stranger_checks_failed == 0
    # the cheater: caught, and credited for honest work only
    # it cheated on client jobs, or a canary (its first job) caught it before any (the
    # canaries are shaped like client jobs: a cheater junking sampled or long answers junks them)
    assert f.cheater_junk_jobs > 0 or (f.quarantined_now and f.cheater_client_jobs == 0)
    # caught, unless so little of its junk reached clients that no check has landed on it yet
    # (then that junk is still held: never credited)
    caught = f.jobs_to_quarantine is not None and f.quarantined_now
    assert caught or f.junk_seen <= MOST_JUNK * requests / 2, "the cheater is quarantined"
    assert f.replay_agrees, f"the escrow replayed from the log matches the admin's: {f.credit}"
    credited = f.credit["credited"]
    assert f.credited_junk_jobs == 0, f"{f.credited_junk_jobs} junk answers were credited: {f.credit}"
    assert credited["jobs"] <= f.cheater_client_jobs - f.cheater_junk_jobs
    assert credited["tokens"] <= f.cheater_honest_tokens + SLACK_TOKENS * credited["jobs"]
    if caught:
        assert f.credit["held"]["jobs"] == 0, "a quarantined host holds nothing: it was voided"
    else:
        assert f.credit["held"]["jobs"] >= f.cheater_junk_jobs, "its junk is held, waiting for a check"
    # what clients saw
    assert f.junk_seen <= MOST_JUNK * requests, (
        f"clients saw {f.junk_seen} junk answers of {requests}; the cheater answered {f.jobs_to_quarantine} "
        f"client jobs ({f.junk_to_quarantine} junk) before its quarantine")
