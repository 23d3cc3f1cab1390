"""The host directory's pure parts: what a replica offers, how others are ranked, and
what crosses between replicas (round trips and rejections)."""

from __future__ import annotations

import orjson
import pytest

from andy_host.coordinator.hosts.registry import Host
from andy_host.coordinator.pool.relay import RESTART
from andy_host.coordinator.pool.work import Work
from andy_host.coordinator.replication.directory import Offer, Peer, offers, parse_peer, rank
from andy_host.coordinator.replication.wire import (
    CrossJob,
    Lines,
    failure_line,
    item_line,
    job_body,
    read_job,
    read_line,
)
from andy_host.errors import APIError, ProtocolError, StreamBroken
from andy_host.protocol import ChatRequest, Chunk, Done, Message, ModelInfo


async def _nothing(*_: object) -> None:
    return None


def host(name: str, models: list[ModelInfo], capacity: int = 2, jobs: int = 0, **extra: object) -> Host:
    h = Host(id=name, name=name, backend="llamacpp", capacity=capacity, send=_nothing, close=_nothing, conn=1,
             **extra)  # type: ignore[arg-type]
    h.models = {m.name: m for m in models}
    h.jobs = {f"j{i}": None for i in range(jobs)}  # type: ignore[misc]
    return h


def test_offers_count_only_hosts_that_may_take_client_jobs() -> None:
    m = ModelInfo("m:latest", loaded=True, tools=True)
    busy = host("busy", [m], capacity=2, jobs=2)
    free = host("free", [m, ModelInfo("e:latest", embed=True)], capacity=3, jobs=1, features={"continue"})
    paused = host("paused", [m], status="paused")
    out = offers([busy, free, paused], now=0.0)
    assert out["m:latest"]["hosts"] == 2 and out["m:latest"]["capacity"] == 5 and out["m:latest"]["free"] == 2
    assert out["m:latest"]["features"] == ["continue", "tools"]
    assert out["e:latest"]["features"] == ["continue", "embed"]


def peer(name: str, free: int, features: frozenset[str] = frozenset(), trusted: bool = False,
         loaded: bool = False, tps: float = 10.0) -> Peer:
    return Peer(name, f"http://{name}", {"m": Offer(1, 4, free, tps, loaded, trusted, features)})


def test_rank_prefers_free_slots_then_loaded_then_speed() -> None:
    peers = [peer("busy", 0), peer("slow", 2, tps=5), peer("fast", 2, tps=50), peer("loaded", 1, loaded=True)]
    order = [p.id for p in rank(peers, "m", "chat", frozenset(), False, set())]
    assert order == ["loaded", "fast", "slow", "busy"]
    assert [p.id for p in rank(peers, "m", "chat", frozenset(), False, {"loaded", "fast"})] == ["slow", "busy"]
    assert rank(peers, "other", "chat", frozenset(), False, set()) == []


def test_rank_honours_needs_embeddings_and_trust() -> None:
    peers = [peer("plain", 2), peer("able", 1, frozenset({"continue", "embed"}), trusted=True)]
    assert [p.id for p in rank(peers, "m", "chat", frozenset({"continue"}), False, set())] == ["able"]
    assert [p.id for p in rank(peers, "m", "embed", frozenset(), False, set())] == ["able"]
    assert [p.id for p in rank(peers, "m", "chat", frozenset(), True, set())] == ["able"]


def test_a_replica_entry_is_read_or_ignored() -> None:
    entry = {"id": "b", "url": "http://b", "models": {"m": {"hosts": 1, "capacity": 2, "free": 1, "tps": 3.5,
                                                              "loaded": True, "trusted": False, "features": ["x"]}}}
    parsed = parse_peer(orjson.dumps(entry))
    assert parsed is not None and parsed.models["m"].features == frozenset({"x"})
    assert parse_peer(None) is None
    assert parse_peer(b"[1]") is None
    assert parse_peer(orjson.dumps({**entry, "models": {"m": {"hosts": "many"}}})) is None
    totals = {"hosts": 3, "serving_hosts": -1, "capacity": 10**12, "in_flight": True, "extra": 5}
    counted = parse_peer(orjson.dumps({**entry, "totals": totals}))
    assert counted is not None and counted.totals == {"hosts": 3}  # nonsense counts are left out
    assert parsed.totals == {}  # an entry from a replica that sends none


def test_job_round_trip_and_rejections() -> None:
    work = Work("chat", "m", ChatRequest(messages=[Message("user", "hi")]), frozenset({"continue"}))
    job = CrossJob(work, "client-1", True, False, "req-1", 30.0)
    assert read_job(job_body(job)) == job
    for bad in ({"kind": "shell"}, {"request": {"messages": "x"}}, {"needs": "all"}, {"budget": -1},
                {"budget": True}, {"client": "c" * 1000}):
        raw = orjson.loads(job_body(job))
        with pytest.raises(ProtocolError):
            read_job(orjson.dumps({**raw, **bad}))


def test_items_round_trip() -> None:
    chunk = read_line(item_line(Chunk(id="j1", content="Hello")).rstrip())
    assert isinstance(chunk, Chunk) and chunk.content == "Hello"
    done = read_line(item_line(Done(id="j1", finish_reason="length", usage={"completion_tokens": 3})).rstrip())
    assert isinstance(done, Done) and done.finish_reason == "length" and done.usage == {"completion_tokens": 3}
    assert read_line(item_line(RESTART).rstrip()) is RESTART
    busy = read_line(failure_line(APIError(503, "No available hosts", type="server_error", code="no_available_hosts",
                                           headers={"Retry-After": "2", "Set-Cookie": "x"})).rstrip())
    assert isinstance(busy, APIError) and busy.code == "no_available_hosts" and busy.headers == {"Retry-After": "2"}
    assert isinstance(read_line(failure_line(StreamBroken("cut")).rstrip()), StreamBroken)
    for bad in (b'{"type":"welcome"}', b'{"type":"fail","status":200,"message":"x"}', b"[]", b'{"type":"chunk"}'):
        with pytest.raises(ProtocolError):
            read_line(bad)


def test_lines_are_split_and_bounded() -> None:
    lines = Lines(limit=10)
    assert lines.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert lines.feed(b":2}\n\n") == [b'{"b":2}']
    with pytest.raises(ProtocolError):
        lines.feed(b"x" * 11)


@pytest.mark.timeout(60)  # linear: well under a second; quadratic: many minutes (a hang)
def test_lines_are_split_in_linear_time_however_the_bytes_are_cut() -> None:
    from andy_host.coordinator.replication.wire import Lines
    from andy_host.errors import ProtocolError

    whole = b'{"type":"chunk"}\n\n{"type":"done"}\npartial'
    for step in (1, 2, 7, len(whole)):
        lines, got = Lines(1000), []
        for i in range(0, len(whole), step):
            got += lines.feed(whole[i:i + step])
        assert got == [b'{"type":"chunk"}', b'{"type":"done"}'] and bytes(lines.buffer) == b"partial"
    slow = Lines(1 << 20)
    for _ in range(300_000):  # a peer sending one byte at a time: 300 KB of one line
        assert slow.feed(b"x") == []
    assert slow.feed(b"\n") == [b"x" * 300_000]
    for cut in (b"y" * 11, b"y" * 5 + b"\n" + b"z" * 11):
        with pytest.raises(ProtocolError):
            Lines(10).feed(cut)


def test_a_merged_chunk_too_long_for_one_line_is_cut_without_losing_a_character() -> None:
    from andy_host.coordinator.replication.wire import Lines, item_line, read_line, split_chunk
    from andy_host.protocol import Chunk, TokenLogprob

    text = "雪" * 25 + "\x01" * 25  # 3 bytes a char in UTF-8; 6 as a JSON escape
    parts = split_chunk(Chunk("j", text, tokens=7), max_chars=8)
    assert "".join(p.content for p in parts) == text and sum(p.tokens for p in parts) == 7
    lines = Lines(8 * 6 + 64)  # 6 bytes a char at worst, and the frame around the content
    read = [read_line(line) for part in parts for line in lines.feed(item_line(part))]
    assert "".join(r.content for r in read if isinstance(r, Chunk)) == text
    tokens = [TokenLogprob(token=w, logprob=-0.1, top=[(w, -0.1)]) for w in ("a", "bb", "", "ccc", "")]
    cut = split_chunk(Chunk("j", "abbccc", tokens=5, logprobs=tokens), max_chars=6)  # chars: text + alternatives
    assert [p.content for p in cut] == ["abb", "ccc"] and all(p.content for p in cut)
    assert [t for p in cut for t in p.logprobs or []] == tokens  # every entry kept, in order
    odd = Chunk("j", "not the tokens", logprobs=tokens)
    assert split_chunk(odd, max_chars=4) == [odd]  # tokens that do not spell the content: left whole


def test_directory_entries_are_signed_with_the_replica_secret() -> None:
    """Write access to Redis without the secret cannot point the pool at another server."""
    from andy_host.coordinator.replication.directory import sign, verified

    payload = orjson.dumps({"id": "b", "url": "http://10.0.0.2:8080", "models": {}})
    signed = sign("s" * 20, payload)
    assert verified("s" * 20, signed) == payload
    forged = signed.replace(b"10.0.0.2", b"evil.example")
    for raw in (forged, payload, sign("other-secret-0123456789", payload), b".", b"", None):
        assert verified("s" * 20, raw) is None


def test_a_replica_on_every_address_without_replica_url_is_warned() -> None:
    """README's `serve --host 0.0.0.0` advertised http://0.0.0.0:8080 to the other
    replicas in silence: on another machine that address is the caller itself."""
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from andy_host.coordinator.replication.federation import FEDERATION, advertise

    for replica_url, listening, warned in (("", "http://0.0.0.0:8080", True), ("", "http://[::]:8080", True),
                                           ("", "http://10.0.0.5:8080", False),
                                           ("http://10.0.0.5:8080", "http://0.0.0.0:8080", False)):
        federation = SimpleNamespace(config=SimpleNamespace(replica_url=replica_url), replica="r",
                                     directory=SimpleNamespace(url=""))
        with capture_logs() as logs:
            advertise({FEDERATION: federation}, listening)  # type: ignore[arg-type]
        assert federation.directory.url == (replica_url or listening)
        assert any(e["event"] == "replica.url_unreachable" for e in logs) is warned, (replica_url, listening)
