"""One set of bounds, on both paths an answer comes by (issue 24, item 4).

The same hostile answer, relayed by a host to this replica's relay or by another
replica across the hop, is caught the same way: the same items reach the client, the
same error ends the answer, and the same strikes are told (the relay strikes its host;
the federation, whose peer's relay struck the host already, logs the same reasons).
And one deadline: taken once where the request enters and passed down, never a
``request_timeout`` started again by the relay under the federation or by the
internal endpoint (checked on an injected clock: the event loop's ``time``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import orjson
import pytest
from aiohttp import StreamReader, web
from aiohttp.client_exceptions import ClientConnectionError
from aiohttp.test_utils import make_mocked_request

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts.registry import Assignment, Host
from andy_host.coordinator.observe.stats import PoolStats
from andy_host.coordinator.pool import bounds
from andy_host.coordinator.pool.bounds import Bound, Breach, answer_limit
from andy_host.coordinator.pool.events import JobEvents
from andy_host.coordinator.pool.relay import RELAY, Answered, Relay
from andy_host.coordinator.pool.work import Work, prompt_chars
from andy_host.coordinator.replication import federation as federation_module
from andy_host.coordinator.replication.directory import Peer
from andy_host.coordinator.replication.endpoint import internal_job
from andy_host.coordinator.replication.federation import FEDERATION, Federation
from andy_host.coordinator.replication.wire import CrossJob, item_line, job_body
from andy_host.coordinator.trust.standing import measured_tokens
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.errors import APIError, StreamBroken
from andy_host.protocol import ChatRequest, Chunk, Done, Message, TokenLogprob
from andy_host.protocol.requests import ToolCall

CONFIG_ = CoordinatorConfig(max_logprobs=8, request_timeout=600.0, queue_timeout=2.0)
MESSAGES = [Message("user", "hi")]
Items = Callable[[], list[Chunk | Done]]


def _work(**request: Any) -> Work:
    return Work("chat", "m", ChatRequest(messages=list(MESSAGES), max_tokens=10, **request))


def _logprobs(text: str) -> list[TokenLogprob]:
    return [TokenLogprob(c, -0.5, [(c, -0.5), ("z", -2.0)]) for c in text]


# the hostile answers: each a fresh list (the bounds correct items in place)
HOSTILE: dict[str, tuple[Work, Items]] = {
    "oversize": (_work(), lambda: [Chunk("j", "x" * 3000), Chunk("j", "y" * 3000), Done("j")]),
    "tool calls unasked": (_work(), lambda: [
        Chunk("j", "sure"), Done("j", "tool_calls", tool_calls=[ToolCall("c1", "rm_rf", "{}")])]),
    "finish tool_calls without calls": (_work(), lambda: [Chunk("j", "ok"), Done("j", "tool_calls")]),
    "too many logprobs": (_work(logprobs=True, top_logprobs=1), lambda: [
        Chunk("j", "abcdef", logprobs=_logprobs("abcdef")), Chunk("j", "ghij", logprobs=_logprobs("ghij")),
        Done("j")]),
    "logprobs unasked": (_work(), lambda: [Chunk("j", "abc", logprobs=_logprobs("abc")), Done("j")]),
    "inflated tokens": (_work(), lambda: [
        Chunk("j", "word " * 40), Done("j", usage={"completion_tokens": 10**6, "prompt_tokens": 10**7})]),
    "honest": (_work(logprobs=True, top_logprobs=1), lambda: [
        Chunk("j", "fine", logprobs=_logprobs("fine")), Done("j", usage={"completion_tokens": 1, "prompt_tokens": 9})]),
}

# strikes each tells (a lie corrected or a bound broken; not what is only trimmed or tidied)
STRIKES = {"oversize": 1, "tool calls unasked": 1, "finish tool_calls without calls": 0, "too many logprobs": 1,
           "logprobs unasked": 0, "inflated tokens": 2, "honest": 0}


def _seen(item: Chunk | Done) -> tuple[Any, ...]:
    """What the client gets of an item (ids differ by path)."""
    logprobs = [(e.token, e.top) for e in item.logprobs] if item.logprobs is not None else None
    if isinstance(item, Chunk):
        return ("chunk", item.content, logprobs)
    return ("done", item.finish_reason, item.usage, item.tool_calls, logprobs)


def _error(exc: BaseException | None) -> tuple[Any, ...] | None:
    if exc is None:
        return None
    assert isinstance(exc, APIError)
    return (type(exc), exc.status, exc.code, exc.message)


Outcome = tuple[list[tuple[Any, ...]], tuple[Any, ...] | None, list[str]]


async def _collect(items: AsyncIterator[Any]) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None]:
    seen: list[tuple[Any, ...]] = []
    try:
        async for item in items:
            seen.append(_seen(item))
    except APIError as exc:
        return seen, _error(exc)
    return seen, None


# the relay's path: a host sends the items over its link ---------------------------------


class _Scheduler:
    """Hands the relay one prepared slot; nothing else to run on."""

    def __init__(self, assignment: Assignment | None) -> None:
        self.assignment = assignment
        self.registry = SimpleNamespace(by_model={}, checkable=lambda host: False)  # no reference: credited at once
        self.waits: list[float] = []

    async def acquire(self, model: str, exclude: set[int], wait: float, *args: Any, **kwargs: Any) -> Assignment:
        self.waits.append(wait)
        assert self.assignment is not None
        return self.assignment

    def release(self, assignment: Assignment) -> None:
        pass

    def candidates(self, *args: Any, **kwargs: Any) -> list[Host]:
        return []


class _Observer:
    def __init__(self) -> None:
        self.strikes: list[str] = []

    def strike(self, host: Host, reason: str) -> None:
        self.strikes.append(reason)

    def answered(self, host: Host, work: Work, answer: Answered, private: bool) -> None:
        pass


class _Paced(JobEvents[Any]):
    """A host's events as its link delivers them: the next one only once the relay took
    the last (nothing queued behind it to merge)."""

    def __init__(self, items: list[Chunk | Done]) -> None:
        super().__init__(max_chars=10**6)
        self.pending = list(items)

    async def get(self) -> Any:
        if self.empty() and self.pending:
            item = self.pending.pop(0)
            if isinstance(item, Done):
                self.end(item, len(item.content))
            else:
                self.put(item, len(item.content))
        return await super().get()


def _host_sending(items: list[Chunk | Done], frames: list[dict[str, Any]]) -> Assignment:
    """A host that answers its job with ``items`` (and records the frames it is sent)."""

    async def send(frame: str) -> None:
        frames.append(orjson.loads(frame))

    async def close(code: int, reason: str) -> None:
        pass

    host = Host(id="h", name="h", backend="x", capacity=1, send=send, close=close, conn=1)
    return Assignment("a1", host, _Paced(items))


def _relay(assignment: Assignment | None) -> tuple[Relay, _Scheduler, _Observer]:
    scheduler = _Scheduler(assignment)
    relay = Relay(scheduler, CONFIG_, PoolStats())
    observer = _Observer()
    relay.observer = observer
    return relay, scheduler, observer


async def _through_relay(work: Work, items: list[Chunk | Done]) -> Outcome:
    relay, _, observer = _relay(_host_sending(items, []))
    seen, error = await _collect(relay.run(work, stream=True))
    await relay.close()
    return seen, error, observer.strikes


# the hop: a peer's relay streams the items back, unbounded (a hostile or other-configured peer)


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning = debug = _record


class _Response:
    """A peer's 200 answer: its NDJSON lines (``response.content.iter_any()``)."""

    def __init__(self, lines: list[bytes]) -> None:
        self.status, self.content, self.lines = 200, self, lines

    async def iter_any(self) -> AsyncIterator[bytes]:
        for line in self.lines:
            yield line


class _Session:
    """The asking replica's HTTP session: each post answered by ``answer`` (sent the body)."""

    def __init__(self, answer: Callable[[dict[str, Any]], list[bytes]]) -> None:
        self.answer = answer
        self.bodies: list[dict[str, Any]] = []

    @contextlib.asynccontextmanager
    async def post(self, url: str, data: bytes, **options: Any) -> AsyncIterator[_Response]:
        body = orjson.loads(data)
        self.bodies.append(body)
        yield _Response(self.answer(body))


PEER = Peer(id="b", url="http://b.invalid", models={})


def _federation(relay: Any, session: _Session, routes: list[Any]) -> Federation:
    directory = SimpleNamespace(replica="a", peers={}, url="http://a.invalid")
    federation = Federation(CONFIG_, directory, relay, SimpleNamespace())
    federation.session = session
    federation.route = lambda *args: routes.pop(0) if routes else False
    return federation


async def _through_hop(work: Work, items: list[Chunk | Done], monkeypatch: pytest.MonkeyPatch) -> Outcome:
    logged = _Log()
    monkeypatch.setattr(federation_module, "log", logged)
    session = _Session(lambda body: [item_line(item) for item in items])
    relay = SimpleNamespace(scheduler=_Scheduler(None))
    seen, error = await _collect(_federation(relay, session, [PEER]).run(work, stream=True))
    reasons = [fields["reason"] for event, fields in logged.events if event == "replica.breach"]
    return seen, error, reasons


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_the_same_breach_is_caught_the_same_on_both_paths(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same hostile items, from a host to the relay and from a replica across the
    hop: the same items reach the client, the same error ends them, the same strikes."""
    work, items = HOSTILE[case]
    relayed = await _through_relay(work, items())
    hopped = await _through_hop(work, items(), monkeypatch)
    assert relayed == hopped
    seen, error, strikes = relayed
    assert len(strikes) == STRIKES[case]
    if error is not None:  # a bound the answer cannot go on past: the explicit error, never a truncated success
        assert error[0] is Breach and issubclass(error[0], StreamBroken) and error[2] == "stream_interrupted"
        assert case in ("oversize", "too many logprobs") and not any(s[0] == "done" for s in seen)
    else:  # within the bounds, or a lie corrected: the answer goes on
        assert seen[-1][0] == "done"
        assert case != "logprobs unasked" or seen[0][2] is None  # dropped: never asked for


async def test_the_bounds_say_what_each_broke() -> None:
    """The rule itself: which items break which bound, and what is corrected in place."""
    struck: list[str] = []
    bound = Bound.of(CONFIG_, _work(), struck.append)
    assert bound.room == answer_limit(CONFIG_, _work().request) == 4096  # max_tokens 10: the floor
    done = Done("j", "tool_calls", usage={"completion_tokens": 10**6, "prompt_tokens": 10**7},
                tool_calls=[ToolCall("c", "f")])
    bound.chunk(Chunk("j", "word " * 40))
    prompt_estimate = measured_tokens(None, prompt_chars(_work()), 1)[0]
    assert bound.done(done) == 50 and done.usage == {"completion_tokens": 50, "prompt_tokens": prompt_estimate}
    assert done.tool_calls == [] and done.finish_reason == "stop" and len(struck) == 3
    with pytest.raises(Breach) as size:
        Bound.of(CONFIG_, _work(), struck.append, sent=4000).chunk(Chunk("j", "x" * 97))
    assert size.value.failed and size.value.reason == struck[-1] == "sent an answer past the size bound"
    logprobs = Bound.of(CONFIG_, _work(logprobs=True), struck.append)
    with pytest.raises(Breach) as many:
        logprobs.chunk(Chunk("j", "a" * 9, logprobs=_logprobs("a" * 9)))
    assert not many.value.failed and "(8)" in many.value.message
    assert bounds.most_prompt_tokens(10) == 4 * 10 + bounds.PROMPT_SLACK


# one deadline ---------------------------------------------------------------------------


@contextlib.contextmanager
def _clock(start: float) -> Iterator[list[float]]:
    """The event loop's clock, held at ``start`` until the test moves it (``now[0] += s``)."""
    loop = asyncio.get_running_loop()
    now = [start]
    loop.time = lambda: now[0]
    try:
        yield now
    finally:
        del loop.time


class _LocalRelay:
    """This replica's relay, as the federation sees it: records the deadline it is given."""

    def __init__(self) -> None:
        self.scheduler = SimpleNamespace(candidates=lambda *args: [object()])
        self.deadlines: list[float | None] = []

    async def run(self, work: Work, client: str, stream: bool, on_stall: Any, trusted_only: bool,
                  trace: str | None, deadline: float | None = None) -> AsyncIterator[Chunk | Done]:
        self.deadlines.append(deadline)
        yield Done("j")


async def test_a_job_across_the_hop_keeps_the_clients_deadline() -> None:
    """The federation takes the deadline once: the peer is sent what is left of it, and
    after the peer is lost (100 s later, on the injected clock) this replica's relay is
    handed the same deadline, not a fresh ``request_timeout`` from then."""
    with _clock(1000.0) as now:
        def lost_after_100s(body: dict[str, Any]) -> list[bytes]:
            now[0] += 100
            raise ClientConnectionError("the replica died")

        relay, session = _LocalRelay(), _Session(lost_after_100s)
        items = [item async for item in _federation(relay, session, [PEER, None]).run(_work(), stream=True)]
    assert isinstance(items[-1], Done)
    assert session.bodies[0]["budget"] == CONFIG_.request_timeout  # all of it, as of the request's arrival
    assert relay.deadlines == [1000.0 + CONFIG_.request_timeout]  # not 1100 + request_timeout


async def test_the_relay_keeps_the_deadline_it_is_given() -> None:
    """Under a deadline handed down, the relay waits for a slot and gives the host no
    longer than what is left of it; a deadline already spent ends the request at once."""
    frames: list[dict[str, Any]] = []
    with _clock(1000.0):
        relay, scheduler, _ = _relay(_host_sending([Chunk("j", "hi"), Done("j")], frames))
        items = [item async for item in relay.run(_work(), stream=True, deadline=1001.5)]
        await relay.close()
        assert isinstance(items[-1], Done)
        assert scheduler.waits == [1.5] and frames[0]["budget"] == 1.5  # not request_timeout's 600
        spent, spent_scheduler, _ = _relay(None)
        with pytest.raises(APIError) as late:
            _ = [item async for item in spent.run(_work(), deadline=1000.0)]
    assert late.value.code == "timeout" and spent_scheduler.waits == []


async def test_the_internal_endpoint_runs_the_job_by_the_askers_deadline() -> None:
    """The replica asked hands its relay the asker's budget as the deadline, from when
    the job arrived (not a ``request_timeout`` of its own)."""
    body = job_body(CrossJob(_work(), "", True, False, None, 7.0))
    relay = _LocalRelay()
    app = web.Application()
    app[FEDERATION] = SimpleNamespace(authentic=lambda header: True, counts={"served_for_peers": 0})
    app[CONFIG] = CONFIG_
    app[RELAY] = relay
    with _clock(5000.0):
        payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
        payload.feed_data(body)
        payload.feed_eof()
        request = make_mocked_request("POST", "/api/andy/internal/jobs", app=app, payload=payload)
        await internal_job(request)
    assert relay.deadlines == [5007.0]
