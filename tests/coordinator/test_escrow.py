"""Credit only for checked work (issue 25): a stranger's client work is held until an
answer check covering it passes, voided when one fails; trusted hosts are credited at
once. Pure tests of trust/escrow.py, the registry and ledger around it, then the
wiring through the in-process pool (tests/harness/inproc.py): the admin's listing and
pool status, the host's own credit endpoint and ``andy-host status``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from andy_host.agent import status as agent_status
from andy_host.agent.identity import host_secret
from andy_host.config import AgentConfig
from andy_host.coordinator.admin.listing import escrow_cells
from andy_host.coordinator.hosts import credit
from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.store.interface import STORE
from andy_host.coordinator.trust import escrow
from andy_host.coordinator.trust.escrow import Cover, Escrow
from andy_host.coordinator.trust.ledger import Ledger
from andy_host.protocol import ModelInfo
from tests.harness import inproc
from tests.harness.inproc import Pool

MODEL = "m:latest"
ADMIN = "escrow-admin"


async def _nothing(*_: Any) -> None:
    return None


def host(host_id: str = "h1", trusted: bool = False, conn: int = 1) -> Host:
    return Host(id=host_id, name=host_id, backend="ollama", capacity=1, send=_nothing, close=_nothing, conn=conn,
                trusted=trusted)


def held(h: Host) -> tuple[int, int]:
    return h.escrow.held_jobs, h.escrow.held_tokens


# --- escrow.py ----------------------------------------------------------------------------


def test_a_trusted_host_is_credited_at_once() -> None:
    h = host(trusted=True)
    escrow.earn(h, 30)
    escrow.earn(h, 12)
    assert (h.served, h.tokens) == (2, 42)
    assert held(h) == (0, 0) and (h.escrow.credited_jobs, h.escrow.credited_tokens) == (2, 42)


def test_work_nothing_can_check_is_credited_at_once() -> None:
    h = host()
    escrow.earn(h, 10, checkable=False)
    assert (h.served, h.tokens) == (1, 10) and held(h) == (0, 0) and h.escrow.credited_jobs == 1


def test_a_strangers_work_is_held_until_a_check_covering_it_passes() -> None:
    h = host()
    escrow.earn(h, 10)
    escrow.earn(h, 20)
    assert (h.served, h.tokens) == (0, 0) and held(h) == (2, 30)
    checked = escrow.cover(h)
    assert (checked.jobs, checked.tokens) == (2, 30)
    escrow.earn(h, 5)  # answered after the checked job: not covered by its check
    escrow.settle(h, checked, passed=True)
    assert (h.served, h.tokens) == (2, 30) and held(h) == (1, 5)
    assert (h.escrow.credited_jobs, h.escrow.credited_tokens) == (2, 30)
    escrow.settle(h, escrow.cover(h), passed=True)
    assert (h.served, h.tokens) == (3, 35) and held(h) == (0, 0)


def test_a_failed_check_voids_everything_held_since_the_last_pass() -> None:
    h = host()
    escrow.earn(h, 10)
    escrow.settle(h, escrow.cover(h), passed=True)
    escrow.earn(h, 20)
    checked = escrow.cover(h)
    escrow.earn(h, 30)  # after the cover: voided all the same
    escrow.settle(h, checked, passed=False)
    assert held(h) == (0, 0) and (h.escrow.voided_jobs, h.escrow.voided_tokens) == (2, 50)
    assert (h.served, h.tokens) == (1, 10)  # what was credited stays credited


def test_a_cover_credits_once_and_never_work_a_failure_voided() -> None:
    h = host()
    escrow.earn(h, 10)
    first = escrow.cover(h)
    escrow.earn(h, 20)
    second = escrow.cover(h)
    escrow.settle(h, second, passed=True)  # the later check ends first: both jobs
    escrow.settle(h, first, passed=True)  # nothing left of what it covered
    assert (h.served, h.tokens) == (2, 30) and held(h) == (0, 0)
    escrow.earn(h, 5)
    stale = escrow.cover(h)
    escrow.settle(h, escrow.cover(h), passed=False)
    escrow.earn(h, 7)
    escrow.settle(h, stale, passed=True)  # from before the failure: credits nothing after it
    assert (h.served, h.tokens) == (2, 30) and held(h) == (1, 7)


def test_a_cover_made_by_hand_settles_at_most_what_is_held() -> None:
    h = host()
    escrow.earn(h, 10)
    escrow.settle(h, Cover(jobs=5, tokens=500), passed=True)
    assert (h.served, h.tokens) == (1, 10) and held(h) == (0, 0)


def test_quarantine_voids_what_is_held_and_credits_nothing() -> None:
    h = host()
    escrow.earn(h, 10)
    checked = escrow.cover(h)
    h.trust.quarantined = "3 failed answer checks"
    assert escrow.sweep(h) and held(h) == (0, 0) and h.escrow.voided_jobs == 1
    escrow.earn(h, 20)  # served while quarantined: voided at once
    escrow.settle(h, checked, passed=True)
    assert (h.served, h.tokens) == (0, 0) and (h.escrow.voided_jobs, h.escrow.voided_tokens) == (2, 30)
    h.trust.quarantined = None  # released: new work is held again, the old stays voided
    escrow.earn(h, 4)
    escrow.settle(h, escrow.cover(h), passed=True)
    assert (h.served, h.tokens) == (1, 4)


def test_a_quarantined_host_is_never_credited_trusted_or_not() -> None:
    for trusted in (True, False):
        h = host(trusted=trusted)
        h.trust.quarantined = "strikes"
        escrow.earn(h, 10)
        assert h.served == 0 and h.tokens == 0 and h.escrow.voided_jobs == 1 and h.escrow.credited_jobs == 0


def test_a_quarantine_takes_back_what_checks_credited_a_stranger() -> None:
    """A pass on an honest job credits the junk held beside it; the quarantine that
    follows takes it all back (the ledger writes the negative difference)."""
    h = host()
    escrow.earn(h, 10)  # junk, held
    escrow.earn(h, 20)  # honest, checked: the pass credits both
    escrow.settle(h, escrow.cover(h), passed=True)
    assert (h.served, h.tokens) == (2, 30)
    escrow.earn(h, 5)
    h.trust.quarantined = "failed an answer check"
    escrow.forfeit(h)
    assert (h.served, h.tokens) == (0, 0)
    assert h.escrow.credited_jobs == 0 and (h.escrow.voided_jobs, h.escrow.voided_tokens) == (3, 35)
    trusted = host(trusted=True)
    escrow.earn(trusted, 10)
    escrow.forfeit(trusted)  # a trusted host's credit was never a check's to take back
    assert trusted.served == 1 and trusted.escrow.credited_jobs == 1




def test_figures_and_cells() -> None:
    e = Escrow(held_jobs=3, held_tokens=120, credited_jobs=40, credited_tokens=9000)
    shown = escrow.figures(e)
    assert shown == {"held": {"jobs": 3, "tokens": 120}, "credited": {"jobs": 40, "tokens": 9000},
                     "voided": {"jobs": 0, "tokens": 0}}
    assert escrow.figures(None)["held"] == {"jobs": 0, "tokens": 0}
    assert escrow_cells(shown) == {"held": "3/120", "credited": "40/9000", "voided": "0/0"}
    assert escrow_cells(None) == {"held": None, "credited": None, "voided": None}


# --- the registry and the ledger ----------------------------------------------------------


def test_the_escrow_survives_a_reconnect_of_the_same_host_id() -> None:
    registry = Registry()
    first = host(conn=1)
    registry.add(first)
    escrow.earn(first, 10)
    registry.remove(first, "connection lost")
    assert "h1" in registry.escrows  # it holds work: kept for when it comes back
    again = host(conn=2)
    registry.add(again)
    assert again.escrow is first.escrow and held(again) == (1, 10)
    assert (again.served, again.tokens) == (0, 0)  # per connection, as the ledger expects
    escrow.settle(first, escrow.cover(again), passed=True)  # a check of the old connection ends now
    assert held(again) == (0, 0) and first.served == 1


def test_an_escrow_that_never_earned_is_dropped_when_its_host_leaves() -> None:
    registry = Registry()
    idle = host("idle")
    registry.add(idle)
    registry.remove(idle, "disconnected")
    assert "idle" not in registry.escrows


def test_work_is_checkable_only_where_a_trusted_host_serves_the_model() -> None:
    registry = Registry()
    stranger, reference = host("s"), host("r", trusted=True, conn=2)
    for h in (stranger, reference):
        registry.add(h)
    registry.set_models(stranger, [ModelInfo(name=MODEL)])
    assert not registry.checkable(stranger)
    registry.set_models(reference, [ModelInfo(name="other:latest")])
    assert not registry.checkable(stranger)
    registry.set_models(reference, [ModelInfo(name=MODEL)])
    assert registry.checkable(stranger) and not registry.checkable(reference)


@dataclass
class Rows:
    written: list[tuple[Any, ...]]

    async def add_ledger(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self.written.extend(rows)


def ledger() -> tuple[Ledger, Rows]:
    rows = Rows([])
    return Ledger(rows), rows  # type: ignore[arg-type]


async def test_the_ledger_writes_a_strangers_work_only_once_checked() -> None:
    book, rows = ledger()
    h = host()
    escrow.earn(h, 10)
    await book.flush([h])
    assert [(r[3], r[4]) for r in rows.written] == [(0, 0)]  # a row (time connected), no credit yet
    escrow.settle(h, escrow.cover(h), passed=True)
    await book.flush([h])
    assert [(r[3], r[4]) for r in rows.written][-1] == (1, 10)


async def test_the_ledger_writes_a_quarantines_take_back_as_a_negative_row() -> None:
    book, rows = ledger()
    h = host()
    escrow.earn(h, 20)
    escrow.settle(h, escrow.cover(h), passed=True)
    await book.flush([h])
    h.trust.quarantined = "failed an answer check"
    escrow.forfeit(h)
    await book.flush([h])
    assert [(r[3], r[4]) for r in rows.written] == [(1, 20), (-1, -20)]  # the store's total: nothing


async def test_the_ledger_voids_what_a_quarantined_host_held() -> None:
    book, _ = ledger()
    h = host()
    escrow.earn(h, 10)
    h.trust.quarantined = "strikes"
    await book.flush([h])
    assert held(h) == (0, 0) and h.escrow.voided_jobs == 1


async def test_a_pass_after_its_host_left_is_written() -> None:
    book, rows = ledger()
    h = host()
    escrow.earn(h, 10)
    checked = escrow.cover(h)
    h.checking = True  # its check is still running
    book.host_left(h)
    await book.flush([])
    await book.flush([])
    assert book.departed == [h]
    escrow.settle(h, checked, passed=True)
    h.checking = False
    await book.flush([])
    await book.flush([])
    assert book.departed == [] and sum(r[3] for r in rows.written) == 1 and sum(r[4] for r in rows.written) == 10
    assert h.conn not in book.flushed


# --- through the in-process pool ----------------------------------------------------------


@dataclass
class Two:
    pool: Pool
    token: str
    reference: inproc.Running
    stranger: inproc.Running

    def live(self, name: str) -> Host:
        return next(h for h in self.pool.registry.hosts.values() if h.name == name)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    """A trusted host and a stranger serving one model; checks of client jobs never due
    (the test settles them itself) and the stranger free to take jobs."""
    async with AsyncExitStack() as stack:
        enter = stack.enter_async_context
        pool = await enter(inproc.coordinator(tmp_path, admin_token=ADMIN, check_every=10**6,
                                              probation_every=10**6, trusted_share=0.0, probation_share=1.0))
        token, _ = await pool.app[STORE].create_token("reference", trusted=True)
        backends = [await enter(inproc.fake("llamacpp", model=MODEL, token_delay=0.01)) for _ in range(2)]
        reference = await enter(inproc.agent(pool, "llamacpp", backends[0], "reference", token=token))
        stranger = await enter(inproc.agent(pool, "llamacpp", backends[1], "stranger"))
        await pool.models({MODEL: 2})
        two = Two(pool, token, reference, stranger)
        await inproc.until(lambda: not two.live("stranger").checking, what="its first canary")
        yield two


async def stranger_served(two: Two, jobs: int) -> None:
    """Client jobs until the stranger has served ``jobs`` of them."""
    async with two.pool.http() as client:
        async def ask(i: int) -> None:
            reply = await client.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}], "temperature": 0.7})
            assert reply.status_code == 200, reply.text

        for turn in range(20):  # more at once than the reference's slots: the stranger takes some
            if two.live("stranger").escrow.ever_held_jobs >= jobs:
                return
            await asyncio.gather(*(ask(turn * 6 + i) for i in range(6)))
    raise AssertionError("the stranger served too few jobs")


async def test_a_strangers_jobs_are_held_in_the_admin_listing_until_settled(two: Two) -> None:
    pool = two.pool
    await stranger_served(two, 2)
    stranger, reference = two.live("stranger"), two.live("reference")
    jobs, tokens = held(stranger)
    assert jobs >= 2 and tokens > 0 and (stranger.served, stranger.tokens) == (0, 0)
    async with pool.http() as client:
        listing = {h["name"]: h for h in (await client.get(
            "/api/andy/admin/hosts", headers={"Authorization": f"Bearer {ADMIN}"})).json()["hosts"]}
        assert listing["stranger"]["escrow"]["held"] == {"jobs": jobs, "tokens": tokens}
        assert listing["stranger"]["escrow"]["credited"] == {"jobs": 0, "tokens": 0}
        assert listing["reference"]["escrow"]["held"] == {"jobs": 0, "tokens": 0}
        assert listing["reference"]["escrow"]["credited"]["jobs"] == reference.served
        # the admin's pool status shows it; a key holder's does not
        admin = (await client.get("/api/andy/pool_status", headers={"Authorization": f"Bearer {ADMIN}"})).json()
        assert {h["name"]: h["escrow"]["held"]["jobs"] for h in admin["hosts"]}["stranger"] == jobs
        keyed = (await client.get("/api/andy/pool_status", headers={"Authorization": f"Bearer {pool.key}"})).json()
        assert keyed["hosts"] and all("escrow" not in h for h in keyed["hosts"])

        escrow.settle(stranger, escrow.cover(stranger), passed=True)  # the check's verdict, by hand
        listing = {h["name"]: h for h in (await client.get(
            "/api/andy/admin/hosts", headers={"Authorization": f"Bearer {ADMIN}"})).json()["hosts"]}
        assert listing["stranger"]["escrow"]["held"] == {"jobs": 0, "tokens": 0}
        assert listing["stranger"]["escrow"]["credited"] == {"jobs": jobs, "tokens": tokens}
    assert (stranger.served, stranger.tokens) == (jobs, tokens)

    async def ledger_rows() -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in await pool.app[STORE].ledger()}

    for _ in range(200):  # the ledger flushes every flush_interval (0.2 s here)
        if (await ledger_rows()).get("stranger", {}).get("tokens") == tokens:
            break
        await asyncio.sleep(0.02)
    assert (await ledger_rows())["stranger"]["requests"] == jobs


async def test_a_failed_check_voids_what_the_stranger_held(two: Two) -> None:
    await stranger_served(two, 1)
    stranger = two.live("stranger")
    jobs, tokens = held(stranger)
    escrow.settle(stranger, escrow.cover(stranger), passed=False)
    async with two.pool.http() as client:
        listing = {h["name"]: h for h in (await client.get(
            "/api/andy/admin/hosts", headers={"Authorization": f"Bearer {ADMIN}"})).json()["hosts"]}
    assert listing["stranger"]["escrow"]["voided"] == {"jobs": jobs, "tokens": tokens}
    assert listing["stranger"]["escrow"]["held"] == {"jobs": 0, "tokens": 0}


async def test_a_host_reads_its_own_credit_and_no_one_elses(two: Two) -> None:
    pool = two.pool
    await stranger_served(two, 1)
    stranger, reference = two.live("stranger"), two.live("reference")
    secret = host_secret(pool.tmp / "state", "stranger")
    assert secret is not None and secret.startswith("andy_hs_")

    async with pool.http() as client:
        async def ask(host_id: str, bearer: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
            return await client.get(credit.credit_path(host_id), headers=headers)

        own = await ask(stranger.id, secret)
        assert own.status_code == 200, own.text
        assert own.json()["held"] == {"jobs": stranger.escrow.held_jobs, "tokens": stranger.escrow.held_tokens}
        assert own.json()["connected"] is True and set(own.json()) == {
            "host_id", "connected", "quarantined", "held", "credited", "voided"}
        mine = await ask(reference.id, two.token)  # a token host proves its id with its token
        assert mine.status_code == 200 and mine.json()["credited"]["jobs"] == reference.escrow.credited_jobs
        refused = [
            await ask(stranger.id, None),  # anonymous
            await ask(stranger.id, pool.key),  # a client's API key
            await ask(stranger.id, two.token),  # another host's token
            await ask(reference.id, secret),  # another host's secret
            await ask(stranger.id, secret[:-1] + ("a" if secret[-1] != "a" else "b")),
            await ask("0123456789abcdef", secret),  # an id nobody has: the same answer
        ]
        assert [r.status_code for r in refused] == [401] * len(refused)
        assert all("held" not in r.text for r in refused)
        assert refused[0].json()["error"]["code"] == "invalid_host_credential"


async def test_the_contributors_status_shows_held_and_credited(two: Two) -> None:
    pool = two.pool
    await stranger_served(two, 2)
    stranger = two.live("stranger")
    escrow.settle(stranger, Cover(jobs=1, tokens=stranger.escrow.held_tokens // 2), passed=True)
    jobs_held, tokens_held = held(stranger)
    config = AgentConfig(name="stranger", state_dir=str(pool.tmp / "state"), connect_timeout=5)
    [shown] = await agent_status.query_all(config, explicit=True)
    assert shown["running"] is True
    assert shown["credit"]["held"] == {"jobs": jobs_held, "tokens": tokens_held}
    assert shown["credit"]["credited"] == {"jobs": 1, "tokens": stranger.tokens}
    text = agent_status.render(shown)
    assert f"credit: {jobs_held} job" in text and "held until checked" in text
    assert f"1 job ({stranger.tokens} tokens) credited" in text and "none voided" in text
    # the reference, asked with its token from the config
    ref = AgentConfig(name="reference", token=two.token, state_dir=str(pool.tmp / "state"), connect_timeout=5)
    [theirs] = await agent_status.query_all(ref, explicit=True)
    assert theirs["credit"]["held"] == {"jobs": 0, "tokens": 0}
    # without a credential it says so, and a coordinator that is away is one line too
    nothing = await agent_status.read_credit(AgentConfig(name="nobody", state_dir=str(pool.tmp / "none")),
                                             {**shown, "name": "nobody"})
    assert "no host token or host secret" in nothing["error"]
    away = await agent_status.read_credit(config, {**shown, "coordinator": "http://127.0.0.1:9"})
    assert "cannot reach the coordinator" in away["error"]
    assert "credit: unknown: cannot reach" in agent_status.render({**shown, "credit": away})


def test_the_agent_asks_the_path_the_coordinator_serves() -> None:
    assert agent_status.CREDIT_PATH == credit.CREDIT_PATH
    assert agent_status.credit_url("http://pool:8080", "ab12") == "http://pool:8080/api/andy/hosts/ab12/credit"
    assert agent_status.credit_url("wss://pool.example/x/api/andy/hosts/ws", "ab12") == \
        "https://pool.example/x/api/andy/hosts/ab12/credit"


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "andy_host.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ANDY_HOST_COORDINATOR_ADMIN_TOKEN": ""})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_coordinator_hosts_shows_the_running_coordinators_escrow(two: Two) -> None:
    pool = two.pool
    await stranger_served(two, 1)
    stranger = two.live("stranger")
    db = str(pool.tmp / "coordinator.db")

    async def listed() -> list[dict[str, Any]]:
        code, out, err = await cli("coordinator", "hosts", "--db", db, "--json", "--url", pool.url,
                                   "--admin-token", ADMIN)
        assert code == 0 and not err, err
        return list(json.loads(out))

    for _ in range(100):  # its ledger row is written at the next flush
        rows = {r["name"]: r for r in await listed()}
        if "stranger" in rows:
            break
        await asyncio.sleep(0.05)
    assert rows["stranger"]["escrow"]["held"] == {"jobs": stranger.escrow.held_jobs,
                                                  "tokens": stranger.escrow.held_tokens}
    code, table, _ = await cli("coordinator", "hosts", "--db", db, "--url", pool.url, "--admin-token", ADMIN)
    assert code == 0
    header, *lines = table.splitlines()
    assert "HELD" in header and "CREDITED" in header and "VOIDED" in header
    line = next(row for row in lines if " stranger " in row)
    assert f" {stranger.escrow.held_jobs}/{stranger.escrow.held_tokens} " in line
    # without the admin token the figures are unknown, not zero; a coordinator away is one line on stderr
    code, table, err = await cli("coordinator", "hosts", "--db", db)
    assert code == 0 and not err and f"{stranger.escrow.held_jobs}/{stranger.escrow.held_tokens}" not in table
    code, table, err = await cli("coordinator", "hosts", "--db", db, "--url", "http://127.0.0.1:9",
                                 "--admin-token", ADMIN)
    assert code == 0 and "stranger" in table and err.count("\n") == 1 and "no escrow figures" in err
