"""The host websocket endpoint: hello, welcome, then frames until the host goes away.

Every frame from a host is validated; a malformed or oversized one closes that host's
connection (code 1008 or 1009) with the reason logged, and everyone else keeps going.
A host that sends nothing (heartbeats included) for ``host_timeout`` is declared dead
and its jobs fail over at once.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from andy_host.coordinator.hosts import Host, Registry
from andy_host.coordinator.state import CONFIG, REGISTRY, STORE
from andy_host.protocol import (
    Cancel,
    Chunk,
    Done,
    Heartbeat,
    Hello,
    HostMessage,
    JobError,
    Models,
    ProtocolError,
    Welcome,
    decode_host,
    encode,
)

log = structlog.get_logger("andy_host.hostlink")


async def host_websocket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[CONFIG]
    registry = request.app[REGISTRY]
    ws = web.WebSocketResponse(
        max_msg_size=config.max_frame_bytes,
        heartbeat=max(config.host_timeout / 2, 0.05),
        compress=False,
    )
    await ws.prepare(request)
    peer = request.remote
    try:
        first = await ws.receive(timeout=config.host_timeout)
    except TimeoutError:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"no hello")
        return ws
    try:
        if first.type != WSMsgType.TEXT:
            raise ProtocolError("first frame must be a text hello")
        hello = decode_host(first.data)
        if not isinstance(hello, Hello):
            raise ProtocolError("first frame must be hello")
    except ProtocolError as exc:
        log.warning("host.rejected", peer=peer, reason=str(exc))
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=str(exc)[:120].encode())
        return ws

    token_id = None
    if hello.token:
        token_id = request.app[STORE].find_token(hello.token)
    refusal = None
    if config.enrolment == "token" and token_id is None:
        refusal = "this pool needs a valid host token (join --token andy_ht_...)"
    elif hello.token and token_id is None:
        refusal = "the host token is unknown or revoked"
    elif config.enrolment == "open" and sum(
        1 for h in registry.hosts.values() if h.peer == peer and h.id != hello.host_id
    ) >= config.max_hosts_per_address:
        refusal = f"at most {config.max_hosts_per_address} hosts per address may join this pool"
    if refusal is not None:
        log.warning("host.refused", peer=peer, name=hello.name, reason=refusal)
        await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=refusal.encode()[:120])
        return ws

    host_id = hello.host_id or uuid.uuid4().hex[:16]
    old = registry.hosts.get(host_id)
    if old is not None:
        registry.remove(old, "replaced by a new connection from the same host")
        await old.close(WSCloseCode.POLICY_VIOLATION, "replaced by a new connection")

    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, message=reason.encode()[:120])

    host = Host(
        id=host_id,
        name=hello.name,
        backend=hello.backend,
        backend_version=hello.backend_version,
        capacity=hello.capacity,
        send=ws.send_str,
        close=close,
        hardware=hello.hardware,
        features=set(hello.features),
        token_id=token_id,
        peer=peer or "",
    )
    bound = log.bind(host_id=host_id, host_name=hello.name, peer=peer)
    registry.add(host)
    registry.set_models(host, hello.models)
    await ws.send_str(encode(Welcome(host_id=host_id, heartbeat_interval=config.heartbeat_interval)))
    for stale in hello.jobs:  # jobs it still holds from before: none are wanted now
        await ws.send_str(encode(Cancel(id=stale)))
    bound.info("host.connected", models=sorted(host.models), capacity=host.capacity)
    reason = "disconnected"
    try:
        while True:
            try:
                msg = await ws.receive(timeout=config.host_timeout)
            except TimeoutError:
                reason = f"silent for {config.host_timeout:.1f}s"
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"host timed out")
                break
            if msg.type == WSMsgType.TEXT:
                try:
                    handle_frame(registry, host, decode_host(msg.data))
                except ProtocolError as exc:
                    reason = f"malformed frame: {exc}"
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=str(exc)[:120].encode())
                    break
            elif msg.type == WSMsgType.BINARY:
                reason = "binary frame"
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"text frames only")
                break
            elif msg.type == WSMsgType.ERROR:
                reason = f"frame error: {ws.exception()}"
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    except asyncio.CancelledError:  # aiohttp cancels the handler when the connection drops
        reason = "connection lost"
        raise
    finally:
        registry.remove(host, reason)
        level = "warning" if reason.startswith(("malformed", "binary", "frame", "silent")) else "info"
        getattr(bound, level)("host.disconnected", reason=reason, served=host.served)
    return ws


def handle_frame(registry: Registry, host: Host, message: HostMessage) -> None:
    """Route one validated frame from a host."""
    if isinstance(message, (Chunk, Done, JobError)):
        assignment = host.jobs.get(message.id)
        if assignment is not None:  # else: a late frame for a job given elsewhere; dropped
            assignment.events.put_nowait(message)
    elif isinstance(message, Heartbeat):
        changed = host.status != message.status
        if message.capacity is not None and message.capacity != host.capacity:
            host.capacity, changed = message.capacity, True
        host.status = message.status
        host.reason = message.reason
        host.loaded = set(message.loaded)
        if message.hardware is not None:
            host.hardware = message.hardware
        if changed:
            registry.notify()
    elif isinstance(message, Models):
        registry.set_models(host, message.models)
    else:
        raise ProtocolError("hello sent twice")
