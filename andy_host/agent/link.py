"""The host's one outbound websocket to the coordinator, kept up with jittered backoff.

Each failure is classified once (:func:`classify`): a refusal that retrying cannot mend
(an unknown or revoked token, a host id that belongs to someone else, a ban, a
protocol the coordinator does not speak) raises :class:`Refused`, which ends the agent
with one clear line and ``EXIT_REFUSED``; anything else is retried with backoff. A
failed connect is told in words (``connect_hint.describe``), and the first one of each
outage logs what to check (``link.down``'s ``hint``), never aiohttp's raw text.

Several coordinators (replicas of one pool) are tried in turn: after any failure or
lost connection the next one, with the same backoff, so a host whose replica died is
connected to a live one within a second or two.

While it holds jobs, the host heartbeats every ``BUSY_HEARTBEAT`` second, so the
coordinator can tell a frozen host from a slow one. Frames this side sends are kept
within the limit the coordinator announced in its welcome.

The websocket is aiohttp's client (its frame reader and masking are compiled, and the
agent already uses aiohttp for its backend).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog
from aiohttp import WSMsgType

from andy_host.agent.connect_hint import Failure, checklist, describe
from andy_host.agent.jobs import JobRunner
from andy_host.agent.tls import client_context
from andy_host.config import AgentConfig
from andy_host.errors import FrameTooLarge, ProtocolError, Refused
from andy_host.protocol import (
    BUSY_HEARTBEAT,
    CLOSE_KICKED,
    FATAL_CLOSES,
    HOSTS_WS_PATH,
    MAX_FRAME_CEILING,
    Cancel,
    Heartbeat,
    Hello,
    Job,
    Welcome,
    decode_coordinator,
    encode,
)

log = structlog.get_logger("andy_host.link")

CLOSE_TIMEOUT = 2.0  # seconds to wait for the coordinator's answer to our close
DEFAULT_FRAME_LIMIT = 8 * 1024 * 1024  # until a welcome says otherwise (protocol 2 coordinators)
MAX_KICK_WAIT = 366 * 86400.0  # a kick never outlasts a year (the admin API caps it there too)


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


def retry_after(exc: BaseException, maximum: float, rng: Callable[[], float] = random.random) -> float | None:
    """The delay a busy coordinator asked for (503 or 429 with Retry-After seconds, as
    its admission pacing answers during a reconnect storm), jittered over [r/2, 3r/2]
    so the hosts it turned away do not come back together; None when it asked none."""
    if not isinstance(exc, aiohttp.WSServerHandshakeError) or exc.status not in (429, 503) or exc.headers is None:
        return None
    try:
        seconds = float(exc.headers.get("Retry-After", ""))
    except ValueError:
        return None
    if not 0 < seconds < 3600:
        return None
    return min(seconds * (0.5 + rng()), maximum)


KICKED = re.compile(rf"^closed \({CLOSE_KICKED} .*retry in (\d{{1,9}})s\)$")


def kicked_wait(reason: str, rng: Callable[[], float] = random.random) -> float | None:
    """The admin kicked this host for a while (close 4005, "... retry in 600s"): wait
    that long, plus up to a tenth more so kicked hosts do not return together, instead
    of knocking every few seconds to be refused again. None for any other ending."""
    match = KICKED.match(reason)
    if match is None:
        return None
    return min(float(match.group(1)), MAX_KICK_WAIT) * (1 + 0.1 * rng())


class Backoff:
    """Exponential delays with jitter: each in [d/2, d], d doubling up to ``maximum``."""

    def __init__(self, minimum: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.minimum, self.maximum, self.rng = minimum, maximum, rng
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.minimum * 2.0**self.attempt)
        self.attempt += 1
        return ceiling / 2 + ceiling / 2 * self.rng()

    def reset(self) -> None:
        self.attempt = 0





def classify(close_code: int | None) -> str:
    """``fatal`` for refusals that retrying cannot mend, else ``retry``."""
    return "fatal" if close_code in FATAL_CLOSES else "retry"


class Link:
    def __init__(
        self,
        config: AgentConfig,
        hello: Callable[[], Hello],
        heartbeat: Callable[[], Heartbeat],
        runner: JobRunner,
        on_state: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.config = config
        self.coordinators = config.coordinator or ["http://127.0.0.1:8080"]
        self.urls = [ws_url(c) for c in self.coordinators]  # every one checked now, not at its turn
        self.turn = 0
        self.url = self.urls[0]
        self.hello = hello
        self.heartbeat = heartbeat
        self.runner = runner
        self.on_state = on_state  # told "connected ..." or "not connected ..." (systemd status lines)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.host_id: str | None = None
        self.last_error: str | None = None
        self.connected = asyncio.Event()
        self.frame_limit = DEFAULT_FRAME_LIMIT
        self.issued: Callable[[str], None] = lambda secret: None  # keeps a secret the welcome issues
        self.assigned: Callable[[str], None] = lambda host_id: None  # keeps an id the welcome gives

    async def send(self, text: str) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            raise ConnectionError("not connected to the coordinator")
        if len(text) * 4 > self.frame_limit and len(text.encode()) > self.frame_limit:
            raise FrameTooLarge(f"a frame of {len(text.encode())} bytes is over the coordinator's limit")
        await ws.send_str(text)

    async def send_quietly(self, text: str) -> None:
        try:
            await self.send(text)
        except (ConnectionError, FrameTooLarge):
            pass

    async def run(self, stop: asyncio.Event) -> None:
        """Keep connected until ``stop``; raises :class:`Refused` on a fatal refusal."""
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        ping = max(self.config.heartbeat_interval, 1.0)
        hinted = False  # the checklist was logged in this outage
        connector = aiohttp.TCPConnector(ssl=client_context(self.config.ca_file),
                                     use_dns_cache=False)  # a name behind a balancer: resolved at each connect
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop.is_set():
                failure: Failure | None = None
                paced: float | None = None
                try:
                    reason = await self._connection(session, stop, backoff, ping)
                except (OSError, TimeoutError, aiohttp.ClientError, ProtocolError) as exc:
                    failure = describe(exc, self.config.connect_timeout)
                    reason = failure.reason
                    paced = retry_after(exc, self.config.reconnect_max)
                finally:
                    hinted = hinted and not self.connected.is_set()  # a new outage begins
                    self.ws = None
                    self.connected.clear()
                    await self.runner.cancel_all()
                self.last_error = reason
                if stop.is_set():
                    break
                paced = paced if paced is not None else kicked_wait(reason)
                delay = backoff.next() if paced is None else paced
                # what to check, once per outage, for a connect that failed (not a closed session)
                hint = {"hint": checklist(failure, self.coordinator)} if failure is not None and not hinted else {}
                hinted = hinted or bool(hint)
                log.warning("link.down", url=self.url, reason=reason, retry_in=round(delay, 2), **hint)
                self._rotate()
                self.on_state(f"not connected ({reason}); retrying in {delay:.0f}s")
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        log.info("link.stopped")

    @property
    def coordinator(self) -> str:
        """The coordinator this link connects to now (or tries next)."""
        return self.coordinators[self.turn]

    def _rotate(self) -> None:
        """After any failure or lost connection, the next coordinator in the list: a
        replica that died is not tried again before the others."""
        self.turn = (self.turn + 1) % len(self.urls)
        self.url = self.urls[self.turn]

    async def _connection(
        self, session: aiohttp.ClientSession, stop: asyncio.Event, backoff: Backoff, ping: float
    ) -> str:
        """One connection, from the handshake to its end; returns why it ended."""
        async with asyncio.timeout(self.config.connect_timeout):
            ws = await session.ws_connect(
                self.url,
                max_msg_size=MAX_FRAME_CEILING,
                heartbeat=ping,  # a ping every interval; no pong within half of it closes
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
        async with ws:
            hello = self.hello()
            await ws.send_str(encode(hello))
            first = await ws.receive(timeout=self.config.connect_timeout)
            if first.type != WSMsgType.TEXT:
                ended = _ended(ws, first)
                if classify(ws.close_code) == "fatal":
                    raise Refused(ws.close_code or 0, _said(first) or ended)
                return ended
            welcome = decode_coordinator(first.data)
            if not isinstance(welcome, Welcome):
                raise ProtocolError("the coordinator did not answer hello with welcome")
            if welcome.secret:
                self.issued(welcome.secret)
            if welcome.host_id != hello.host_id:
                self.assigned(welcome.host_id)
            self.frame_limit = welcome.max_frame_bytes or DEFAULT_FRAME_LIMIT
            self.ws, self.host_id, self.last_error = ws, welcome.host_id, None
            backoff.reset()
            self.connected.set()
            log.info("link.connected", url=self.url, host_id=welcome.host_id, protocol=welcome.protocol)
            self.on_state(f"connected to {self.coordinator} as {welcome.host_id}")
            return await self._session(ws, stop, welcome.heartbeat_interval)

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event, interval: float) -> str:
        """Receive until the connection ends; the heartbeat and close-on-stop tasks live
        exactly as long, and a heartbeat loop that crashed is raised, not dropped."""
        beats = asyncio.create_task(self._heartbeats(ws, interval))
        closer = asyncio.create_task(self._close_on_stop(ws, stop))
        try:
            return await self._receive(ws)
        finally:
            for task in (beats, closer):
                task.cancel()
            await asyncio.gather(beats, closer, return_exceptions=True)
            if not beats.cancelled() and beats.exception() is not None:
                raise RuntimeError("the heartbeat loop crashed") from beats.exception()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        await ws.send_str(encode(self.heartbeat()))
        while True:
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    log.warning("link.bad_frame", error="binary frame")
                    continue
                ended = _ended(ws, msg)
                if classify(ws.close_code) == "fatal":
                    raise Refused(ws.close_code or 0, _said(msg) or ended)
                return ended
            try:
                message = decode_coordinator(msg.data)
            except ProtocolError as exc:
                log.warning("link.bad_frame", error=str(exc))
                continue
            if isinstance(message, Job):
                self.runner.start(message, self.send)
            elif isinstance(message, Cancel):
                self.runner.cancel(message.id)

    async def _heartbeats(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        """A heartbeat every ``interval``, and every BUSY_HEARTBEAT while jobs run."""
        sent = time.monotonic()
        try:
            while True:
                await asyncio.sleep(min(BUSY_HEARTBEAT, interval))
                now = time.monotonic()
                if self.runner.active or now - sent >= interval:
                    await ws.send_str(encode(self.heartbeat()))
                    sent = now
        except ConnectionError:
            pass

    async def _close_on_stop(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> None:
        await stop.wait()
        await ws.close(code=1001, message=b"host shutting down")


def _said(msg: aiohttp.WSMessage) -> str:
    return msg.extra if isinstance(msg.extra, str) else ""


def _ended(ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> str:
    """Why the connection ended, from the message that ended it."""
    if msg.type == WSMsgType.ERROR:
        return f"{type(msg.data).__name__}: {msg.data}"
    code = ws.close_code if ws.close_code is not None else msg.data
    detail = f"{code if code is not None else ''} {_said(msg)}".strip()
    return f"closed ({detail})" if detail else "closed"

