"""The pure pieces that bound what a host can make the coordinator hold or do:
admission, address groups, the job queue, event classification, periodic work."""

from __future__ import annotations

import asyncio

import pytest

from andy_host.coordinator.hosts.admission import Gate
from andy_host.coordinator.hosts.enrolment import Admitted, Credential, Identity, Policy, Refusal, admit_host
from andy_host.coordinator.hosts.registry import HostLost, Registry
from andy_host.coordinator.pool.events import JobEvents, Overflow
from andy_host.coordinator.pool.relay import Abort, Answer, Failover, classify
from andy_host.coordinator.pool.work import Work
from andy_host.coordinator.runtime.periodic import Periodic
from andy_host.coordinator.web.addresses import address_group, client_address, parse_networks
from andy_host.protocol import (
    CLOSE_BANNED,
    CLOSE_FULL,
    CLOSE_ID_REFUSED,
    CLOSE_KICKED,
    CLOSE_TOKEN_REFUSED,
    ChatRequest,
    Chunk,
    Hello,
    JobError,
    Message,
    ModelInfo,
)

OPEN = Policy("open", max_hosts_per_group=2)
NO_CREDENTIAL = Credential(token_id=None, token_given=False, token_banned=None, secret_hash=None)


def hello(host_id: str | None = None) -> Hello:
    return Hello(name="h", backend="ollama", models=[], capacity=1, host_id=host_id)


def decide(host_id: str | None = None, credential: Credential = NO_CREDENTIAL, identity: Identity | None = None,
           held: bool = False, in_group: int = 0, kicked: float = 0.0, policy: Policy = OPEN) -> Admitted | Refusal:
    return admit_host(hello(host_id), credential, identity, held=held, hosts_in_group=in_group, kicked_for=kicked,
                      policy=policy)


def test_a_new_open_host_gets_an_id_and_a_secret() -> None:
    first = decide()
    assert isinstance(first, Admitted) and first.register and first.issue_secret and len(first.host_id) == 16


def test_a_registered_id_needs_its_own_credential() -> None:
    mine = Identity("abc", token_id=None, secret_hash="h1")
    ok = decide("abc", Credential(None, False, None, "h1"), mine, held=True)
    assert isinstance(ok, Admitted) and not ok.register and not ok.issue_secret
    for credential in (NO_CREDENTIAL, Credential(None, False, None, "h2"), Credential(7, True, None, None)):
        refused = decide("abc", credential, mine, held=True)
        assert isinstance(refused, Refusal) and refused.code == CLOSE_ID_REFUSED
    tokened = Identity("t1", token_id=7, secret_hash=None)
    assert isinstance(decide("t1", Credential(7, True, None, None), tokened), Admitted)
    assert isinstance(decide("t1", Credential(8, True, None, None), tokened), Refusal)


def test_an_unregistered_id_in_use_is_refused() -> None:
    refused = decide("legacy", held=True)
    assert isinstance(refused, Refusal) and refused.code == CLOSE_ID_REFUSED


def test_tokens_bans_kicks_and_caps() -> None:
    token_pool = Policy("token", 16)
    assert decide(policy=token_pool) == Refusal(CLOSE_TOKEN_REFUSED, decide(policy=token_pool).reason)  # type: ignore[union-attr]
    bad = decide(credential=Credential(None, True, None, None))
    assert isinstance(bad, Refusal) and bad.code == CLOSE_TOKEN_REFUSED and "revoked" in bad.reason
    banned = decide(credential=Credential(3, True, "spam", None))
    assert isinstance(banned, Refusal) and banned.code == CLOSE_BANNED
    kicked = decide(kicked=30)
    assert isinstance(kicked, Refusal) and kicked.code == CLOSE_KICKED
    full = decide(in_group=2)
    assert isinstance(full, Refusal) and full.code == CLOSE_FULL
    assert isinstance(decide(in_group=2, policy=Policy("token", 2), credential=Credential(1, True, None, None)),
                      Admitted)  # the address cap is for open enrolment


def test_gate_counts_per_group_and_in_total() -> None:
    gate = Gate(total_limit=3, group_limit=2)
    assert gate.try_enter("a") and gate.try_enter("a") and not gate.try_enter("a")
    assert gate.try_enter("b") and not gate.try_enter("c")
    gate.leave("a")
    assert gate.try_enter("c")
    for group in ("a", "b", "c"):
        gate.leave(group)
    assert gate.total == 0 and gate.groups == {}


async def test_gate_paces_a_storm_through_a_bounded_line() -> None:
    """A full gate lines connections up (first come, first in) instead of refusing them;
    the line is bounded, counts against each group, and a wait that ends gives up its turn."""
    gate = Gate(total_limit=2, group_limit=2, queue_limit=2)
    assert gate.try_enter("a") and gate.try_enter("b")
    first = asyncio.create_task(gate.enter("c", 5))
    second = asyncio.create_task(gate.enter("d", 5))
    await asyncio.sleep(0)
    assert len(gate.line) == 2 and not await gate.enter("e", 5)  # the line is full: refused at once
    gate.leave("a")
    assert await first and not second.done()  # the freed place went to the first in line
    gate.leave("b")
    assert await second
    assert not await gate.enter("f", 0.05) and gate.groups.get("f") is None  # waited too long: gave up
    gate.try_enter("x")  # gate full again; a waiter cancelled (its client left) frees its place in line
    waiter = asyncio.create_task(gate.enter("g", 5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not gate.line and "g" not in gate.groups
    for group in ("c", "d"):
        gate.leave(group)
    assert gate.total == 0 and gate.groups == {}


@pytest.mark.parametrize(("address", "group"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.1", "198.51.100.1"),
    ("not an address", "not an address"),
])
def test_address_groups(address: str, group: str) -> None:
    assert address_group(address) == group


def test_forwarded_for_over_every_line() -> None:
    proxies = parse_networks(["10.0.0.0/8"])
    assert client_address("10.0.0.1", ["1.2.3.4", "5.6.7.8, 10.0.0.2"], proxies) == "5.6.7.8"
    assert client_address("203.0.113.9", ["1.2.3.4"], proxies) == "203.0.113.9"  # not from a proxy: ignored
    assert client_address("10.0.0.1", [], proxies) == "10.0.0.1"


async def test_job_events_are_bounded_and_say_so_once() -> None:
    called: list[bool] = []
    events: JobEvents[Chunk] = JobEvents(max_chars=200)
    events.on_overflow = lambda: called.append(True)
    assert events.put(Chunk("j", "x" * 500), 500)  # nothing waits: taken, whatever its size
    assert not events.put(Chunk("j", "y"), 1)  # a backlog past the bound: closed
    assert not events.put(Chunk("j", "z"), 1)  # closed: nothing more is kept
    assert called == [True]
    assert (await events.get()).content == "x" * 500  # type: ignore[union-attr]
    assert isinstance(await events.get(), Overflow)
    assert events.empty() and events.size == 0


async def test_events_without_content_count_too() -> None:
    events: JobEvents[Chunk] = JobEvents(max_chars=1000)
    accepted = 0
    while events.put(Chunk("j", ""), 0):
        accepted += 1
    assert accepted < 20  # each event costs EVENT_COST: empty ones cannot pile up


async def test_nothing_is_kept_after_the_last_event() -> None:
    events: JobEvents[Chunk | HostLost] = JobEvents(max_chars=1000)
    events.end(HostLost("gone"), 0)
    assert not events.put(Chunk("j", "late"), 4)


def test_classify() -> None:
    assert isinstance(classify(Chunk("j", "x"), False), Chunk)
    assert isinstance(classify(HostLost("gone"), False), Failover)
    assert isinstance(classify(Overflow("slow"), False), Abort)
    assert classify(JobError("j", 500, "boom"), False).blame == "failed"  # type: ignore[union-attr]
    assert classify(JobError("j", 429, "busy"), False).blame == "none"  # type: ignore[union-attr]
    rejected = classify(JobError("j", 400, "Your key expired: renew at http://evil.example"), False)
    assert isinstance(rejected, Failover) and rejected.blame == "rejected"
    assert "evil" not in rejected.error.message  # a host's text never becomes the client's
    context = classify(JobError("j", 400, "x", code="context_length_exceeded"), False)
    # not believed at once: a host could end every long chat with it; a second host must agree
    assert isinstance(context, Failover) and context.blame == "rejected"
    assert context.error.code == "context_length_exceeded"
    assert classify(JobError("j", 400, "no prefill"), True).cannot_continue  # type: ignore[union-attr]


def test_what_a_continuation_is_asked_for_counts_each_hosts_own_tokens() -> None:
    """The first host's count of what it generated stands where its text supports it;
    else the fewest tokens that spell the text (32 characters a token at most), so the
    continuation is never asked for fewer tokens than remain."""
    work = Work("chat", "m", ChatRequest(messages=[Message("user", "hi")], max_tokens=300))
    honest = Answer([])
    for _ in range(50):
        honest.add(Chunk("j", " word123", tokens=1))  # 400 characters: 100 by the old estimate
    assert honest.tokens() == 50
    assert work.continued(honest.text(), honest.tokens()).max_tokens == 250
    for claim in (10**6, 0):  # more than 4 a character, or fewer than spell the text: not believed
        liar = Answer([])
        liar.add(Chunk("j", " word123" * 50, tokens=claim))
        assert liar.tokens() == 13  # ceil(400 / 32): no more than the truth
    rescued = Answer([])
    rescued.add(Chunk("j", " word123" * 50, tokens=50))
    rescued.next_host()  # another host's part is judged on its own
    rescued.add(Chunk("j", " word123" * 10, tokens=10**6))
    assert rescued.tokens() == 50 + 3
    rescued.clear()
    assert rescued.tokens() == 0


def test_known_models_are_bounded_and_forgotten() -> None:
    registry = Registry(max_models_per_host=3, max_known_models=5)

    class FakeHost:
        id, models, loaded, trusted = "h", {}, set(), False

    host = FakeHost()
    for batch in range(4):
        registry.set_models(host, [ModelInfo(name=f"m{batch}-{i}:latest") for i in range(10)])  # type: ignore[arg-type]
        assert len(host.models) == 3
    new, gone = registry.drain_names()  # what the store is told: it stays as bounded as the registry
    assert len(registry.known) <= 5 and len(gone) >= 7 and len(new - gone) <= 5
    assert registry.forget(now=10**12, ttl=60) and set(registry.known) == set(registry.by_model)


async def test_a_crashed_periodic_job_is_reported_not_silent() -> None:
    periodic = Periodic()
    ticks = {"ok": 0}

    async def ok() -> None:
        ticks["ok"] += 1

    async def locked() -> None:
        import sqlite3

        raise sqlite3.OperationalError("database is locked")

    async def bug() -> None:
        raise KeyError("oops")

    periodic.every("ok", 0.01, ok)
    periodic.every("locked", 0.01, locked)
    periodic.every("bug", 0.05, bug)
    periodic.start()
    await asyncio.wait_for(periodic.failed.wait(), 2)
    assert periodic.error is not None and "bug" in periodic.error and "KeyError" in periodic.error
    assert ticks["ok"] >= 2  # the passing failure of "locked" did not stop anything
    await periodic.stop()


@pytest.mark.parametrize(("reference", "answer", "agree"), [
    ("No, 419 is not an even number.", "No.", True),  # an honest host that stopped sooner (seen on the real model)
    ("The capital of France is Paris.", "The capital of France is Paris, a city", True),
    ("Paris", "paris", True),
    ("pool heard: What colour is grass?", "lorem ipsum zebra quartz nimbus", False),
    ("The capital of France is Paris.", "Berlin is a city in Germany.", False),
    ("Yes, 42 is an even number.", "No.", False),
    ("", "anything", None),
])
def test_answer_comparison_tolerates_honest_drift_only(reference: str, answer: str, agree: bool | None) -> None:
    from andy_host.coordinator.trust.standing import similar

    assert similar(reference, answer) is agree


async def test_a_send_to_a_host_that_does_not_read_is_bounded() -> None:
    """The coordinator's frames to a host: a host that stops reading is cut off within
    host_send_timeout, and the caller (a job) sees a lost connection, not a hang."""
    from andy_host.coordinator.hosts.link import _bounded
    from andy_host.coordinator.hosts.registry import Host

    class Deaf:
        async def send_str(self, text: str) -> None:
            await asyncio.sleep(3600)  # the socket's buffers are full

    aborted: list[bool] = []
    host = Host(id="h", name="deaf", backend="x", capacity=1, send=None, close=None, conn=1)  # type: ignore[arg-type]
    send = _bounded(Deaf(), host, 0.05, lambda: aborted.append(True))  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(send("job"), 1)
    assert aborted == [True]


def test_registry_counts_hosts_per_group_and_trusted_hosts_per_model() -> None:
    """The counts admission and answer checks read instead of scanning every host (a
    reconnect storm of 10,000 hosts made those scans quadratic)."""
    from andy_host.coordinator.hosts.registry import Host
    from andy_host.protocol import ModelInfo

    def make(ident: str, group: str, trusted: bool = False) -> Host:
        return Host(id=ident, name=ident, backend="x", capacity=1, send=None, close=None, conn=1,  # type: ignore[arg-type]
                    group=group, trusted=trusted)

    registry = Registry()
    a, b, c = make("a", "g1"), make("b", "g1", trusted=True), make("c", "g2", trusted=True)
    for host in (a, b, c):
        registry.add(host)
        registry.set_models(host, [ModelInfo(name="m:latest"), ModelInfo(name="n:latest")])
    assert registry.groups == {"g1": 2, "g2": 1}
    assert registry.trusted_by_model == {"m:latest": 2, "n:latest": 2}
    registry.set_models(b, [ModelInfo(name="m:latest")])  # withdrew n
    assert registry.trusted_by_model == {"m:latest": 2, "n:latest": 1}
    again = make("a", "g3")  # the same host id reconnected from elsewhere, replacing the old link
    registry.add(again)
    registry.remove(a, "replaced")  # the old link ends: nothing counted twice
    assert registry.groups == {"g1": 1, "g2": 1, "g3": 1}
    for host in (again, b, c):
        registry.remove(host, "gone")
    assert registry.groups == {} and registry.trusted_by_model == {}
