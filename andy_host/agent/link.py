"""The host's one outbound websocket to the coordinator, kept up with jittered backoff.

The websocket is aiohttp's client (its frame reader and masking are compiled, and the
agent already uses aiohttp for its backend): it answered a job-sized frame about 35 µs
sooner per round trip than the pure-Python ``websockets`` client on the benchmark
machine.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog
from aiohttp import WSMsgType

from andy_host.agent.jobs import JobRunner
from andy_host.config import AgentConfig
from andy_host.notify import Notifier
from andy_host.protocol import (
    HOSTS_WS_PATH,
    Cancel,
    Heartbeat,
    Hello,
    Job,
    ProtocolError,
    Welcome,
    decode_coordinator,
    encode,
)

log = structlog.get_logger("andy_host.link")

MAX_FRAME_BYTES = 16 * 1024 * 1024
CLOSE_TIMEOUT = 2.0  # seconds to wait for the coordinator's answer to our close


def ws_url(coordinator: str) -> str:
    """``http://pool:8080`` -> ``ws://pool:8080/api/andy/hosts/ws`` (https -> wss)."""
    parts = urlsplit(coordinator.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a coordinator URL: {coordinator!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(HOSTS_WS_PATH):
        path = path.removesuffix("/api/andy/v1").removesuffix("/api/andy") + HOSTS_WS_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class Backoff:
    """Exponential delays with jitter: each in [d/2, d], d doubling up to ``maximum``."""

    def __init__(self, minimum: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.minimum, self.maximum, self.rng = minimum, maximum, rng
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.minimum * (2**self.attempt))
        self.attempt += 1
        return ceiling / 2 + ceiling / 2 * self.rng()

    def reset(self) -> None:
        self.attempt = 0


class Link:
    def __init__(
        self,
        config: AgentConfig,
        hello: Callable[[], Hello],
        heartbeat: Callable[[], Heartbeat],
        runner: JobRunner,
    ) -> None:
        self.config = config
        self.url = ws_url(config.coordinator)
        self.hello = hello
        self.heartbeat = heartbeat
        self.runner = runner
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.host_id: str | None = None
        self.last_error: str | None = None
        self.connected = asyncio.Event()
        self.notifier = Notifier()
        self._ready_sent = False

    async def send(self, text: str) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError("not connected to the coordinator")
        await ws.send_str(text)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        ping = max(self.config.heartbeat_interval, 1.0)
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    reason = await self._connection(session, stop, backoff, ping)
                except aiohttp.WSServerHandshakeError as exc:
                    reason = f"coordinator refused the connection: HTTP {exc.status}"
                except (OSError, TimeoutError, aiohttp.ClientError, ProtocolError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                finally:
                    self.ws = None
                    self.connected.clear()
                    await self.runner.cancel_all()
                self.last_error = reason
                if stop.is_set():
                    break
                delay = backoff.next()
                log.warning("link.down", url=self.url, reason=reason, retry_in=round(delay, 2))
                self.notifier.status(f"not connected ({reason}); retrying in {delay:.0f}s")
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        log.info("link.stopped")

    async def _connection(
        self, session: aiohttp.ClientSession, stop: asyncio.Event, backoff: Backoff, ping: float
    ) -> str:
        """One connection, from the handshake to its end; returns why it ended."""
        async with asyncio.timeout(self.config.connect_timeout):
            ws = await session.ws_connect(
                self.url,
                max_msg_size=MAX_FRAME_BYTES,
                heartbeat=ping,  # a ping every interval; no pong within half of it closes
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
        async with ws:
            await ws.send_str(encode(self.hello()))
            first = await ws.receive(timeout=self.config.connect_timeout)
            if first.type != WSMsgType.TEXT:
                return _ended(ws, first)
            welcome = decode_coordinator(first.data)
            if not isinstance(welcome, Welcome):
                raise ProtocolError("the coordinator did not answer hello with welcome")
            self.ws, self.host_id, self.last_error = ws, welcome.host_id, None
            backoff.reset()
            self.connected.set()
            log.info("link.connected", url=self.url, host_id=welcome.host_id)
            line = f"connected to {self.config.coordinator} as {welcome.host_id}"
            if self._ready_sent:
                self.notifier.status(line)
            else:
                self.notifier.ready(line)
                self._ready_sent = True
            return await self._session(ws, stop, welcome.heartbeat_interval)

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event, interval: float) -> str:
        beats = asyncio.create_task(self._heartbeats(ws, interval))
        closer = asyncio.create_task(self._close_on_stop(ws, stop))
        try:
            await ws.send_str(encode(self.heartbeat()))
            while True:
                msg = await ws.receive()
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        log.warning("link.bad_frame", error="binary frame")
                        continue
                    return _ended(ws, msg)
                try:
                    message = decode_coordinator(msg.data)
                except ProtocolError as exc:
                    log.warning("link.bad_frame", error=str(exc))
                    continue
                if isinstance(message, Job):
                    self.runner.start(message, self.send)
                elif isinstance(message, Cancel):
                    self.runner.cancel(message.id)
        finally:
            beats.cancel()
            closer.cancel()

    async def _heartbeats(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await ws.send_str(encode(self.heartbeat()))
        except ConnectionError:
            pass

    async def _close_on_stop(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> None:
        await stop.wait()
        await ws.close(code=1001, message=b"host shutting down")

    async def send_quietly(self, text: str) -> None:
        try:
            await self.send(text)
        except ConnectionError:
            pass


def _ended(ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> str:
    """Why the connection ended, from the message that ended it."""
    if msg.type == WSMsgType.ERROR:
        return f"{type(msg.data).__name__}: {msg.data}"
    code = ws.close_code if ws.close_code is not None else msg.data
    said = msg.extra if isinstance(msg.extra, str) else ""
    detail = f"{code if code is not None else ''} {said}".strip()
    return f"closed ({detail})" if detail else "closed"
