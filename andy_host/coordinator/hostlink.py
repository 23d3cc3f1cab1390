"""The host websocket endpoint: hello, admission, welcome, then frames until the host goes.

Every frame from a host is hostile input. Before its hello a connection is held only
``hello_timeout`` seconds, and only so many connect at once, in all and per address
group. The hello is admitted by :func:`enrolment.admit_host` (a host id is bound to its
credential). After that, every frame is validated; a malformed or oversized one
closes that host's connection (1008 or 1009) with the reason logged, and everyone
else keeps going. A host that sends nothing for ``host_timeout`` is declared dead;
one that holds jobs and speaks protocol 3 heartbeats every second, so when it is
silent for ``busy_host_timeout`` it is frozen, and its jobs fail over at once.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from andy_host.coordinator import secrets as sec
from andy_host.coordinator.addresses import address_group
from andy_host.coordinator.enrolment import Admitted, Credential, Policy, Refused, admit_host, credential_key
from andy_host.coordinator.hosts import Host, Registry
from andy_host.coordinator.state import CHECKER, CONFIG, GATE, KICKS, REGISTRY, STORE
from andy_host.protocol import (
    BUSY_HEARTBEAT_PROTOCOL,
    CLOSE_PROTOCOL,
    Cancel,
    Chunk,
    Done,
    Heartbeat,
    Hello,
    HostMessage,
    JobError,
    Models,
    ProtocolError,
    VersionError,
    Welcome,
    decode_host,
    encode,
)

log = structlog.get_logger("andy_host.hostlink")


async def host_websocket(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    group = address_group(request.remote or "", config.address_group_v4, config.address_group_v6)
    gate = request.app[GATE]
    if not gate.enter(group):
        log.warning("host.too_many_connecting", group=group)
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
    decision, credential, trusted = _admit(request.app, hello, group)
    if isinstance(decision, Refused):
        log.warning("host.refused", group=group, name=hello.name, code=decision.code, reason=decision.reason)
        await ws.close(code=decision.code, message=decision.reason.encode()[:120])
        return ws
    host = await _welcome(request.app, ws, hello, decision, credential, group, trusted)
    await _serve(request.app, ws, host)
    return ws


async def _read_hello(ws: web.WebSocketResponse, wait: float, group: str) -> Hello | None:
    """The first frame as a hello; None (the connection closed with a reason) otherwise."""
    try:
        first = await ws.receive(timeout=wait)
    except TimeoutError:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no hello")
        return None
    try:
        if first.type != WSMsgType.TEXT:
            raise ProtocolError("first frame must be a text hello")
        hello = decode_host(first.data)
        if not isinstance(hello, Hello):
            raise ProtocolError("first frame must be hello")
    except ProtocolError as exc:
        code = CLOSE_PROTOCOL if isinstance(exc, VersionError) else WSCloseCode.POLICY_VIOLATION
        log.warning("host.rejected", group=group, reason=str(exc))
        await ws.close(code=code, message=str(exc)[:120].encode())
        return None
    return hello


def _admit(app: web.Application, hello: Hello, group: str) -> tuple[Admitted | Refused, Credential, bool]:
    """Gather what the store and the registry know about this hello, then decide."""
    config, store, registry = app[CONFIG], app[STORE], app[REGISTRY]
    token = store.find_token(hello.token) if hello.token else None
    credential = Credential(
        token_id=token.id if token else None,
        token_given=bool(hello.token),
        token_banned=token.banned if token else None,
        secret_hash=sec.digest(hello.secret) if hello.secret else None,
    )
    identity = store.identity(hello.host_id) if hello.host_id else None
    holder = registry.hosts.get(hello.host_id) if hello.host_id else None
    in_group = sum(1 for h in registry.hosts.values() if h.group == group and h is not holder)
    kicked = app[KICKS].left(credential_key(credential.token_id, credential.secret_hash, hello.host_id or ""))
    decision = admit_host(
        hello, credential, identity, held=holder is not None, hosts_in_group=in_group, kicked_for=kicked,
        policy=Policy(config.enrolment, config.max_hosts_per_address),
    )
    return decision, credential, bool(token and token.trusted)


async def _welcome(
    app: web.Application, ws: web.WebSocketResponse, hello: Hello, admitted: Admitted, credential: Credential,
    group: str, trusted: bool,
) -> Host:
    """Register the host (replacing its own older connection), welcome it, cancel stale jobs."""
    config, registry, store = app[CONFIG], app[REGISTRY], app[STORE]
    host_id = admitted.host_id
    secret = sec.new_secret(sec.HOST_SECRET_PREFIX) if admitted.issue_secret else None
    secret_hash = sec.digest(secret) if secret else credential.secret_hash
    if admitted.register:
        store.register_identity(host_id, credential.token_id, secret_hash if credential.token_id is None else None)
    old = registry.hosts.get(host_id)
    if old is not None:  # the same credential: its own older connection
        registry.remove(old, "replaced by a new connection from the same host")
        await old.close(WSCloseCode.POLICY_VIOLATION, "replaced by a new connection")

    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, message=reason.encode()[:120])

    host = Host(
        id=host_id, name=hello.name, backend=hello.backend, backend_version=hello.backend_version,
        capacity=hello.capacity, send=ws.send_str, close=close, conn=app[REGISTRY].next_conn(),
        hardware=hello.hardware, features=set(hello.features), token_id=credential.token_id, group=group,
        protocol=hello.protocol, secret_hash=secret_hash, trusted=trusted, trust=store.standing(host_id),
    )
    registry.add(host)
    registry.set_models(host, hello.models)
    await ws.send_str(encode(Welcome(host_id=host_id, heartbeat_interval=config.heartbeat_interval, secret=secret,
                                     max_frame_bytes=config.max_frame_bytes)))
    for stale in hello.jobs[:host.capacity * 4]:  # jobs it still holds from before: none are wanted now
        await ws.send_str(encode(Cancel(id=stale)))
    log.info("host.connected", host_id=host_id, host_name=hello.name, protocol=hello.protocol,
             models=sorted(host.models), capacity=host.capacity, new_secret=secret is not None, trusted=trusted,
             quarantined=host.trust.quarantined)
    app[CHECKER].joined(host)
    return host


async def _serve(app: web.Application, ws: web.WebSocketResponse, host: Host) -> None:
    """The frame loop, until the host goes; its jobs fail over when it does."""
    config, registry = app[CONFIG], app[REGISTRY]
    bound = log.bind(host_id=host.id, host_name=host.name)
    reason = "disconnected"
    try:
        reason = await _frames(ws, registry, host, config.host_timeout)
    except BaseException:  # aiohttp cancels the handler when the connection drops
        reason = "connection lost"
        raise
    finally:
        registry.remove(host, reason)
        level = "warning" if reason.startswith(("malformed", "binary", "frame", "silent")) else "info"
        getattr(bound, level)("host.disconnected", reason=reason, served=host.served)


async def _frames(ws: web.WebSocketResponse, registry: Registry, host: Host, silence: float) -> str:
    """Read and route frames; returns why the connection ended."""
    while True:
        try:
            msg = await ws.receive(timeout=silence)
        except TimeoutError:
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"host timed out")
            return f"silent for {silence:.1f}s"
        host.last_frame = time.monotonic()
        if msg.type == WSMsgType.TEXT:
            try:
                handle_frame(registry, host, decode_host(msg.data))
            except ProtocolError as exc:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=str(exc)[:120].encode())
                return f"malformed frame: {exc}"
        elif msg.type == WSMsgType.BINARY:
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"text frames only")
            return "binary frame"
        elif msg.type == WSMsgType.ERROR:
            return f"frame error: {ws.exception()}"
        else:  # CLOSE, CLOSING, CLOSED
            return "disconnected"


def handle_frame(registry: Registry, host: Host, message: HostMessage) -> None:
    """Route one validated frame from a host."""
    if isinstance(message, (Chunk, Done, JobError)):
        assignment = host.jobs.get(message.id)
        if assignment is not None:  # else: a late frame for a job given elsewhere; dropped
            size = len(message.content) if isinstance(message, (Chunk, Done)) else 0
            assignment.events.put(message, size)
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
    """Hosts that hold jobs, heartbeat while busy (protocol 3), and were silent past ``limit``."""
    return [
        h for h in registry.hosts.values()
        if h.jobs and h.protocol >= BUSY_HEARTBEAT_PROTOCOL and h.silent_for(now) > limit
    ]


async def drop_frozen(registry: Registry, limit: float) -> None:
    """Declare frozen hosts dead: their jobs fail over now, not at ``host_timeout``."""
    for host in frozen_hosts(registry, time.monotonic(), limit):
        silent = host.silent_for(time.monotonic())
        log.warning("host.frozen", host_id=host.id, silent=round(silent, 2), jobs=len(host.jobs))
        registry.remove(host, f"frozen: silent for {silent:.1f}s while holding jobs")
        await host.close(WSCloseCode.GOING_AWAY, "frozen: no heartbeat while holding jobs")

