"""The host's one outbound websocket to the coordinator, kept up with jittered backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

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
        self.ws: ClientConnection | None = None
        self.host_id: str | None = None
        self.last_error: str | None = None
        self.connected = asyncio.Event()
        self.notifier = Notifier()
        self._ready_sent = False

    async def send(self, text: str) -> None:
        ws = self.ws
        if ws is None:
            raise ConnectionError("not connected to the coordinator")
        await ws.send(text)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        while not stop.is_set():
            try:
                async with connect(
                    self.url,
                    open_timeout=self.config.connect_timeout,
                    max_size=MAX_FRAME_BYTES,
                    ping_interval=max(self.config.heartbeat_interval, 1.0),
                    ping_timeout=max(self.config.heartbeat_interval, 1.0) * 2,
                    close_timeout=2,
                    compression=None,
                ) as ws:
                    await ws.send(encode(self.hello()))
                    first = await asyncio.wait_for(ws.recv(), self.config.connect_timeout)
                    welcome = decode_coordinator(first)
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
                    await self._session(ws, stop, welcome.heartbeat_interval)
                    reason = f"closed ({ws.close_code} {ws.close_reason or ''})".strip()
            except InvalidURI as exc:
                log.error("link.fatal", url=self.url, error=str(exc))
                raise
            except InvalidStatus as exc:
                reason = f"coordinator refused the connection: HTTP {exc.response.status_code}"
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, ProtocolError) as exc:
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

    async def _session(self, ws: ClientConnection, stop: asyncio.Event, interval: float) -> None:
        beats = asyncio.create_task(self._heartbeats(ws, interval))
        closer = asyncio.create_task(self._close_on_stop(ws, stop))
        try:
            await ws.send(encode(self.heartbeat()))
            async for raw in ws:
                try:
                    message = decode_coordinator(raw)
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

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await ws.send(encode(self.heartbeat()))
        except ConnectionClosed:
            pass

    async def _close_on_stop(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        await stop.wait()
        await ws.close(code=1001, reason="host shutting down")

    async def send_quietly(self, text: str) -> None:
        try:
            await self.send(text)
        except (ConnectionError, ConnectionClosed):
            pass
