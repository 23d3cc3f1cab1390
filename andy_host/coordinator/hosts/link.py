"""The host websocket endpoint: hello, admission, welcome, then frames until the host goes.

Every frame from a host is hostile input. Before its hello a connection is held at
most ``hello_timeout`` seconds in all (pings do not extend it), and only so many
connect at once, in all and per address group (the client's address as
``trusted_proxies`` say). The hello is admitted by :func:`enrolment.admit_host` (a
host id is bound to its credential). After that:

- every frame is validated; a malformed or oversized one closes that host's
  connection (1008 or 1009) with the reason logged, and everyone else keeps going;
- frames for a job the host does not hold are dropped before their body is checked,
  and heartbeats and model lists beyond a small budget are ignored, so a host cannot
  make the coordinator spend its time on them;
- the coordinator's own sends to a host are bounded by ``host_send_timeout``: a host
  that stops reading is disconnected, and its jobs fail over;
- a host silent for ``host_timeout`` is declared dead; one that holds jobs heartbeats
  every second, so silent for ``busy_host_timeout`` it is frozen, and its jobs fail
  over at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.access.auth import ACCESS
from andy_host.coordinator.hosts.admission import GATE, NEW_HOSTS
from andy_host.coordinator.hosts.enrolment import (
    KICKS,
    Admitted,
    Credential,
    Policy,
    Refusal,
    admit_host,
    credential_key,
)
from andy_host.coordinator.hosts.registry import REGISTRY, Host, Registry
from andy_host.coordinator.store.interface import STORE
from andy_host.coordinator.trust.checks import CHECKER
from andy_host.coordinator.web.addresses import address_group, client_address
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.errors import ProtocolError, VersionError
from andy_host.protocol import (
    CLOSE_FULL,
    CLOSE_PROTOCOL,
    Cancel,
    Chunk,
    Done,
    Heartbeat,
    Hello,
    HostMessage,
    JobError,
    Models,
    Welcome,
    decode_host_object,
    encode,
    load_object,
)

log = structlog.get_logger("andy_host.hostlink")

CONTROL_BURST = 20  # heartbeats and model lists a host may send at once...
CONTROL_RATE = 5.0  # ...and per second after that; more are ignored
JOB_FRAMES = frozenset({"chunk", "done", "error"})
MAX_REASON = 120  # bytes of a close reason (the protocol allows 123)


class ControlBudget:
    """A token bucket for a host's heartbeats and model lists."""

    __slots__ = ("tokens", "updated")

    def __init__(self) -> None:
        self.tokens, self.updated = float(CONTROL_BURST), time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(CONTROL_BURST, self.tokens + (now - self.updated) * CONTROL_RATE)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def close_reason(text: str) -> bytes:
    """A close reason within the protocol's limit, cut at a word."""
    raw = text.encode()
    if len(raw) <= MAX_REASON:
        return raw
    return raw[:MAX_REASON].rsplit(b" ", 1)[0].decode(errors="ignore").encode()


async def host_websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    address = client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                             request.app[ACCESS].trusted)
    group = address_group(address, config.address_group_v4, config.address_group_v6)
    gate = request.app[GATE]
    if not await gate.enter(group, config.admission_wait):
        log.warning("host.too_many_connecting", group=group, waiting=len(gate.line))
        raise web.HTTPServiceUnavailable(text="too many hosts are connecting; retry shortly",
                                         headers={"Retry-After": "5"})
    try:
        ws = web.WebSocketResponse(
            max_msg_size=config.max_frame_bytes, heartbeat=max(config.host_timeout / 2, 0.05), compress=False
        )
        await ws.prepare(request)
        hello = await _read_hello(ws, config.hello_timeout, group)
    finally:
        gate.leave(group)
    if hello is None:
        return ws
    decision, credential, trusted = await _admit(request.app, hello, group)
    if isinstance(decision, Refusal):
        log.warning("host.refused", group=group, name=hello.name, code=decision.code, reason=decision.reason)
        await ws.close(code=decision.code, message=close_reason(decision.reason))
        return ws
    abort = request.transport.abort if request.transport is not None else (lambda: None)
    await _serve(request.app, ws, hello, decision, credential, group, trusted, abort)
    return ws


async def _read_hello(ws: web.WebSocketResponse, wait: float, group: str) -> Hello | None:
    """The first frame as a hello, within ``wait`` seconds in all; None (the connection
    closed with a reason) otherwise."""
    try:
        async with asyncio.timeout(wait):  # one deadline: pings and pongs do not extend it
            first = await ws.receive()
    except TimeoutError:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no hello")
        return None
    try:
        if first.type != WSMsgType.TEXT:
            raise ProtocolError("first frame must be a text hello")
        hello = decode_host_object(load_object(first.data))
        if not isinstance(hello, Hello):
            raise ProtocolError("first frame must be hello")
    except ProtocolError as exc:
        code = CLOSE_PROTOCOL if isinstance(exc, VersionError) else WSCloseCode.POLICY_VIOLATION
        log.warning("host.rejected", group=group, reason=str(exc))
        await ws.close(code=code, message=close_reason(str(exc)))
        return None
    return hello


async def _admit(app: web.Application, hello: Hello, group: str) -> tuple[Admitted | Refusal, Credential, bool]:
    """Gather what the store and the registry know about this hello, then decide."""
    config, store, registry = app[CONFIG], app[STORE], app[REGISTRY]
    token = await store.find_token(hello.token) if hello.token else None
    credential = Credential(
        token_id=token.id if token else None,
        token_given=bool(hello.token),
        token_banned=token.banned if token else None,
        secret_hash=sec.digest(hello.secret) if hello.secret else None,
    )
    identity = await store.identity(hello.host_id) if hello.host_id else None
    holder = registry.hosts.get(hello.host_id) if hello.host_id else None
    in_group = registry.groups.get(group, 0) - (1 if holder is not None and holder.group == group else 0)
    kicked = app[KICKS].left(credential_key(credential.token_id, credential.secret_hash, hello.host_id or ""))
    legacy = identity is None and hello.host_id is not None and await store.host_in_ledger(hello.host_id)
    decision = admit_host(
        hello, credential, identity, held=holder is not None, hosts_in_group=in_group, kicked_for=kicked,
        policy=Policy(config.enrolment, config.max_hosts_per_address), legacy=legacy,
    )
    if isinstance(decision, Admitted) and decision.register and not app[NEW_HOSTS].check(
        group, config.new_hosts_per_hour, time.time()
    ).allowed:
        decision = Refusal(CLOSE_FULL, "too many new hosts from this address this hour; retry later")
    return decision, credential, bool(token and token.trusted)


async def _serve(
    app: web.Application, ws: web.WebSocketResponse, hello: Hello, admitted: Admitted, credential: Credential,
    group: str, trusted: bool, abort: Callable[[], None],
) -> None:
    """Welcome the host, serve its frames until it goes; its jobs fail over when it does.
    It is in the registry (and given jobs) only after the welcome reached it."""
    config, registry = app[CONFIG], app[REGISTRY]
    host = await _host(app, ws, hello, admitted, credential, group, trusted, abort)
    bound = log.bind(host_id=host.id, host_name=host.name)
    reason = "disconnected"
    try:
        await _welcome(app, ws, hello, host, admitted)
        registry.add(host)
        registry.set_models(host, hello.models)
        bound.info("host.connected", protocol=hello.protocol, models=sorted(host.models), capacity=host.capacity,
                   new_secret=admitted.issue_secret, trusted=trusted, quarantined=host.trust.quarantined)
        app[CHECKER].joined(host)
        reason = await _frames(ws, registry, host, config.host_timeout)
    except BaseException:  # aiohttp cancels the handler when the connection drops
        reason = "connection lost"
        raise
    finally:
        registry.remove(host, reason)
        level = "warning" if reason.startswith(("malformed", "binary", "frame", "silent", "not reading")) else "info"
        getattr(bound, level)("host.disconnected", reason=reason, served=host.served)


async def _host(
    app: web.Application, ws: web.WebSocketResponse, hello: Hello, admitted: Admitted, credential: Credential,
    group: str, trusted: bool, abort: Callable[[], None],
) -> Host:
    """The host's record: identity registered, a secret issued where due, standing loaded."""
    store, config = app[STORE], app[CONFIG]
    secret = sec.new_secret(sec.HOST_SECRET_PREFIX) if admitted.issue_secret else None
    secret_hash = sec.digest(secret) if secret else credential.secret_hash
    if admitted.register:
        stored_secret = secret_hash if credential.token_id is None else None
        await store.register_identity(admitted.host_id, credential.token_id, stored_secret)
    host = Host(
        id=admitted.host_id, name=hello.name, backend=hello.backend, backend_version=hello.backend_version,
        capacity=hello.capacity, send=ws.send_str, close=_closer(ws), conn=app[REGISTRY].next_conn(),
        hardware=hello.hardware, features=set(hello.features), token_id=credential.token_id, group=group,
        protocol=hello.protocol, secret_hash=secret_hash, trusted=trusted,
        trust=await store.standing(admitted.host_id),
    )
    host.send = _bounded(ws, host, config.host_send_timeout, abort)
    host.issued_secret = secret
    return host


def _bounded(ws: web.WebSocketResponse, host: Host, limit: float,
             abort: Callable[[], None]) -> Callable[[str], Awaitable[None]]:
    """The host's send: a host that does not read its frames within ``limit`` is cut off."""
    async def send(text: str) -> None:
        try:
            async with asyncio.timeout(limit):
                await ws.send_str(text)
        except TimeoutError:
            log.warning("host.not_reading", host_id=host.id, waited=limit)
            abort()  # the frame loop ends, and the registry drops it with its jobs
            raise ConnectionError(f"host did not read its frames for {limit:.0f}s") from None

    return send


def _closer(ws: web.WebSocketResponse) -> Callable[[int, str], Awaitable[Any]]:
    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, message=close_reason(reason))

    return close


async def _welcome(app: web.Application, ws: web.WebSocketResponse, hello: Hello, host: Host,
                   admitted: Admitted) -> None:
    """Replace its own older connection, welcome it, cancel the jobs it held before."""
    config, registry = app[CONFIG], app[REGISTRY]
    old = registry.hosts.get(host.id)
    if old is not None:  # the same credential: its own older connection
        registry.remove(old, "replaced by a new connection from the same host")
        await old.close(WSCloseCode.POLICY_VIOLATION, "replaced by a new connection")
    await host.send(encode(Welcome(host_id=host.id, heartbeat_interval=config.heartbeat_interval,
                                   secret=host.issued_secret, max_frame_bytes=config.max_frame_bytes)))
    for stale in hello.jobs[: host.capacity * 4]:  # jobs it still holds from before: none are wanted now
        await host.send(encode(Cancel(id=stale)))


async def _frames(ws: web.WebSocketResponse, registry: Registry, host: Host, silence: float) -> str:
    """Read and route frames; returns why the connection ended."""
    budget = ControlBudget()
    while True:
        try:
            msg = await ws.receive(timeout=silence)
        except TimeoutError:
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"host timed out")
            return f"silent for {silence:.1f}s"
        host.last_frame = time.monotonic()
        if msg.type == WSMsgType.TEXT:
            try:
                obj = load_object(msg.data)
                if _wanted(host, obj, budget):
                    handle_frame(registry, host, decode_host_object(obj))
            except ProtocolError as exc:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=close_reason(str(exc)))
                return f"malformed frame: {exc}"
        elif msg.type == WSMsgType.BINARY:
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"text frames only")
            return "binary frame"
        elif msg.type == WSMsgType.ERROR:
            return f"frame error: {ws.exception()}"
        else:  # CLOSE, CLOSING, CLOSED
            return "disconnected"



def _wanted(host: Host, obj: dict[str, Any], budget: ControlBudget) -> bool:
    """Is this frame worth checking? Job frames only for jobs the host holds (embeddings
    only for embedding jobs); heartbeats and model lists within the budget."""
    kind = obj.get("type")
    if kind in JOB_FRAMES:
        job_id = obj.get("id")
        if not isinstance(job_id, str):
            raise ProtocolError("field 'id' must be a string")
        assignment = host.jobs.get(job_id)
        if assignment is None:
            return False  # a late frame for a job given elsewhere, or none at all: dropped unread
        if obj.get("embeddings") is not None and assignment.kind != "embed":
            raise ProtocolError("embeddings for a job that is not an embedding job")
        return True
    if kind in ("heartbeat", "models"):
        return budget.take(time.monotonic())
    return True


def handle_frame(registry: Registry, host: Host, message: HostMessage) -> None:
    """Route one validated frame from a host."""
    if isinstance(message, (Chunk, Done, JobError)):
        assignment = host.jobs.get(message.id)
        if assignment is None:
            return
        if isinstance(message, Chunk):
            if message.content:  # empty chunks are not progress, and not kept
                assignment.events.put(message, len(message.content))
        else:
            assignment.events.end(message, len(message.content) if isinstance(message, Done) else 0)
    elif isinstance(message, Heartbeat):
        _heartbeat(registry, host, message)
    elif isinstance(message, Models):
        registry.set_models(host, message.models)
    else:
        raise ProtocolError("hello sent twice")


def _heartbeat(registry: Registry, host: Host, message: Heartbeat) -> None:
    changed = host.status != message.status
    if message.capacity is not None and message.capacity != host.capacity:
        host.capacity, changed = message.capacity, True
    host.status = message.status
    host.reason = message.reason
    host.pause = message.pause
    host.loaded = set(message.loaded) & set(host.models)
    if message.hardware is not None:
        host.hardware = message.hardware
    if message.features is not None:
        host.features = set(message.features) - host.features_lost
    if changed:
        registry.notify()


def frozen_hosts(registry: Registry, now: float, limit: float) -> list[Host]:
    """Hosts that hold jobs and were silent past ``limit`` (they heartbeat every second)."""
    return [h for h in registry.hosts.values() if h.jobs and h.silent_for(now) > limit]


async def drop_frozen(registry: Registry, limit: float) -> None:
    """Declare frozen hosts dead: their jobs fail over now, not at ``host_timeout``."""
    for host in frozen_hosts(registry, time.monotonic(), limit):
        silent = host.silent_for(time.monotonic())
        log.warning("host.frozen", host_id=host.id, silent=round(silent, 2), jobs=len(host.jobs))
        registry.remove(host, f"frozen: silent for {silent:.1f}s while holding jobs")
        try:
            await host.close(WSCloseCode.GOING_AWAY, "frozen: no heartbeat while holding jobs")
        except ConnectionError:
            pass
