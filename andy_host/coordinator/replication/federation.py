"""Jobs across replicas: a request at this replica may run on a host held by another.

Routing (``Federation.route``): a host here with a free slot first (no hop, no Redis
call: the directory view is in memory); else the replica whose directory entry shows
free slots for the model (then a loaded model, then free slots times measured speed);
else this replica's own queue when it has hosts for the model; else a replica whose
hosts are busy (its fair queue decides). Only replicas whose hosts, together, offer the
features the job needs are asked; the one asked checks for itself.

The job goes to the other replica by an internal HTTP call (``replica_wire``), which
runs it through its own relay (its hosts' failover, measurement and checks) and
streams the items back; the replica asked never forwards again. The failover rules
hold across the hop:

- a replica that cannot be reached, refuses, or whose stream ends without its end
  (it died) is a lost route: before any content the job goes to the next route,
  invisibly; after content it continues on another route with the answer so far as
  the assistant prefix, as a failed host's would (waiting up to ``queue_timeout`` for
  a host to appear: the dead replica's hosts reconnect here or elsewhere), or ends with
  the explicit error, never a truncated success;
- what comes back is bounded here again, by the relay's own rule (``bounds.Bound``:
  answer size, tool calls only when tools were offered, log probabilities only when
  asked, token counts measured from the text): a host's claims are worth no more for
  having come through another replica. The replica that ran the job struck its host
  for a breach already (its relay applies the same rule); here a breach is logged, and
  the answer ends with the explicit error (a cut or malformed line: a lost route), never
  a truncated success;
- one deadline: the request's, taken where it entered (``run``, or its caller's) and
  passed down, to this replica's relay and, as the budget left, across the hop; no
  route starts a ``request_timeout`` of its own.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.hosts.registry import Registry
from andy_host.coordinator.pool.bounds import Bound, Strike, request_deadline
from andy_host.coordinator.pool.relay import RESTART, Answer, Relay, Restart
from andy_host.coordinator.pool.scheduler import Scheduler
from andy_host.coordinator.pool.work import Work
from andy_host.coordinator.replication.directory import TOTALS, Directory, Peer, rank
from andy_host.coordinator.replication.wire import (
    INTERNAL_JOBS_PATH,
    REPLICA_HEADER,
    CrossJob,
    Lines,
    job_body,
    read_line,
)
from andy_host.errors import CONTEXT_EXCEEDED, APIError, ProtocolError, StreamBroken, timeout_error
from andy_host.protocol import Chunk, Done

log = structlog.get_logger("andy_host.federation")

Item = Chunk | Done | Restart
LOCAL = None  # the route "a host of this replica"
SETTLE_STEP = 0.05  # seconds between looks for a host after a replica was lost


class PeerLost(Exception):
    """The replica running the job could not be reached, or its answer ended early."""


def _redis_errors() -> tuple[type[Exception], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class Federation:
    """This replica's part in a replicated pool: its directory entry and the routes."""

    def __init__(self, config: CoordinatorConfig, directory: Directory, relay: Relay, registry: Registry) -> None:
        self.config = config
        self.directory = directory
        self.relay = relay
        self.scheduler: Scheduler = relay.scheduler
        self.registry = registry
        self.session: aiohttp.ClientSession | None = None
        self.counts = {"forwarded": 0, "served_for_peers": 0, "routes_lost": 0, "continued": 0}
        self._expected = f"Bearer {config.replica_secret}".encode()

    @property
    def replica(self) -> str:
        return self.directory.replica

    def authentic(self, authorization: str) -> bool:
        """Is this the shared replica secret (compared in constant time)?"""
        # surrogateescape: a header's bytes that are not UTF-8 are a wrong secret (401), not a 500
        return hmac.compare_digest(authorization.encode("utf-8", "surrogateescape"), self._expected)

    def summary(self) -> dict[str, Any]:
        """This replica and the others it sees (for /health): ids, models, counts."""
        return {"id": self.replica, "url": self.directory.url, "counts": dict(self.counts),
                "peers": {p.id: sorted(p.models) for p in self.directory.peers.values()}}

    # the directory ------------------------------------------------------------------

    async def publish(self) -> None:
        try:
            await self.directory.publish(list(self.registry.hosts.values()))
        except _redis_errors() as exc:
            log.warning("directory.publish_failed", error=f"{type(exc).__name__}: {exc}")

    async def refresh(self) -> None:
        try:
            peers = await self.directory.refresh()
        except _redis_errors() as exc:
            log.warning("directory.read_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.registry.remote = {name for peer in peers.values() for name in peer.models}

    # routing ------------------------------------------------------------------------

    def route(self, work: Work, trusted_only: bool, tried: set[str], local: bool) -> Peer | bool | None:
        """Where to run the job next: a Peer, LOCAL (``local``: if here is still worth
        a try), or False (nowhere left)."""
        model, kind, needs = work.model, work.kind, work.needs
        if local and not self.scheduler.queued(model) and self.scheduler.pick(
                model, set(), kind, needs, trusted_only) is not None:
            return LOCAL  # a free host here: no peer ranked, as in one process
        peers = rank(self.directory.peers.values(), model, kind, needs, trusted_only, tried)
        free = [p for p in peers if p.models[model].free > 0]
        if free:
            return free[0]
        if local and self.scheduler.candidates(model, set(), kind, needs, trusted_only):
            return LOCAL
        if peers:
            return peers[0]
        return LOCAL if local else False

    async def run(
        self, work: Work, client: str = "", stream: bool = True, on_stall: Callable[[], None] | None = None,
        trusted_only: bool = False, trace: str | None = None, deadline: float | None = None,
    ) -> AsyncGenerator[Item, None]:
        """The relay's ``run``, over every replica's hosts (see the module's rules),
        within the one ``deadline`` (the loop's time; taken here when not given)."""
        loop = asyncio.get_running_loop()
        deadline = request_deadline(self.config) if deadline is None else deadline
        job = _Crossing(work, stream)
        for _ in range(self.config.max_attempts + len(self.directory.peers) + 1):
            if job.sent.parts and not work.continuable:
                if stream:
                    break
                job.sent.clear()
                yield RESTART
            current = _continued(work, job.sent) if job.sent.parts else work
            where = self.route(current, trusted_only, job.tried, job.local)
            if where is False or loop.time() >= deadline:
                break
            if where is LOCAL:
                job.local = False
                source = self.relay.run(current, client, stream, on_stall, trusted_only, trace, deadline)
            else:
                assert isinstance(where, Peer)
                job.tried.add(where.id)
                source = self._on_peer(where, CrossJob(current, client, stream, trusted_only, trace,
                                                       deadline - loop.time()))
            try:
                async for item in self._relayed(source, job, continuing=current is not work):
                    yield item
                    if isinstance(item, Done):
                        return
            except PeerLost as lost:
                log.warning("job.replica_lost", replica=getattr(where, "id", None), reason=str(lost),
                            content_sent=bool(job.sent.parts), request_id=trace)
                job.lost(str(lost))
                self.counts["routes_lost"] += 1
                await self._settle(work, trusted_only, job.tried, deadline)
            except APIError as error:
                if job.sent.parts and not isinstance(error, StreamBroken):  # after content: the stream's error
                    job.last = error
                    raise job.failure() from None
                if job.sent.parts or error.code not in ("no_available_hosts", CONTEXT_EXCEEDED):
                    raise
                if job.last is None or job.last.code != CONTEXT_EXCEEDED:  # the prompt too long is the news
                    job.last = error  # busy or gone there, or too small there: another route may have room
        raise job.failure()

    async def _relayed(self, source: AsyncGenerator[Item, None], job: _Crossing,
                       continuing: bool) -> AsyncGenerator[Item, None]:
        """One route's items, recorded; its Done counts the tokens sent before it."""
        before = job.sent.tokens()
        async with aclosing(source):
            async for item in source:
                if isinstance(item, Done):
                    item.usage["completion_tokens"] = item.usage.get("completion_tokens", 0) + before
                    if continuing:
                        self.counts["continued"] += 1
                _record(job.sent, item)
                yield item

    async def _settle(self, work: Work, trusted_only: bool, tried: set[str], deadline: float) -> None:
        """After a lost replica: wait (up to ``queue_timeout``) for a host here or another
        replica that serves the model (the lost replica's hosts reconnect somewhere)."""
        loop = asyncio.get_running_loop()
        until = min(deadline, loop.time() + self.config.queue_timeout)
        needs = work.continue_needs()
        for _ in range(int(self.config.queue_timeout / SETTLE_STEP) + 1):
            if self.scheduler.candidates(work.model, set(), work.kind, needs, trusted_only) or rank(
                    self.directory.peers.values(), work.model, work.kind, needs, trusted_only, tried):
                return
            if loop.time() >= until:
                return
            await asyncio.sleep(SETTLE_STEP)

    # the hop ------------------------------------------------------------------------

    async def _on_peer(self, peer: Peer, job: CrossJob) -> AsyncGenerator[Item, None]:
        """The job run by ``peer``: its items, bounded here; PeerLost when it is lost."""
        config, session = self.config, self.session
        assert session is not None
        wait = config.queue_timeout + (config.ttft_timeout if job.stream else config.answer_timeout)
        # the whole hop within the request's budget (the peer ends its answer by then), so a
        # peer that keeps the connection open with empty lines cannot hold this one longer
        timeout = aiohttp.ClientTimeout(total=job.budget + config.replica_connect_timeout,
                                        connect=config.replica_connect_timeout,
                                        sock_read=wait + config.replica_connect_timeout)
        headers = {"Authorization": f"Bearer {config.replica_secret}", REPLICA_HEADER: self.replica,
                   "Content-Type": "application/json"}
        bound = Bound.of(config, job.work, _breached(peer, job.trace))  # the peer's relay's very bound
        self.counts["forwarded"] += 1
        started = time.monotonic()
        try:
            async with session.post(peer.url + INTERNAL_JOBS_PATH, data=job_body(job), headers=headers,
                                    timeout=timeout) as response:
                if response.status != 200:
                    raise PeerLost(f"{peer.id} answered HTTP {response.status}")
                lines = Lines(config.max_frame_bytes)
                async for data in response.content.iter_any():
                    for line in lines.feed(data):
                        item = read_line(line)
                        if isinstance(item, APIError):
                            raise item
                        if isinstance(item, Done):  # logged first: the consumer stops at Done
                            log.info("job.crossed", replica=peer.id, request_id=job.trace,
                                     seconds=round(time.monotonic() - started, 4))
                        yield _bounded(bound, item, job.stream)
                        if isinstance(item, Done):
                            return
        except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError) as exc:
            raise PeerLost(f"{peer.id}: {type(exc).__name__}: {exc}") from None
        raise PeerLost(f"{peer.id}: the answer ended before its end")

    # lifetime -----------------------------------------------------------------------

    async def close(self) -> None:
        try:
            await self.directory.withdraw()
        except _redis_errors() as exc:
            log.warning("directory.withdraw_failed", error=str(exc))
        if self.session is not None:
            await self.session.close()


class _Crossing:
    """One request across its routes: what went to the client, where it was tried."""

    def __init__(self, work: Work, stream: bool) -> None:
        self.work, self.stream = work, stream
        self.sent = Answer([])
        self.tried: set[str] = set()  # replicas asked
        self.local = True  # a host here is still worth a try
        self.last: APIError | None = None

    def lost(self, reason: str) -> None:
        """A replica was lost: its hosts may reconnect here, so here is worth a try again."""
        self.local = True
        self.last = APIError(502, f"a replica was lost ({reason})", type="server_error", code="host_lost")

    def failure(self) -> APIError:
        """What the client is told when no route answered."""
        if self.sent.parts:
            detail = f" ({self.last.message})" if self.last else ""
            return StreamBroken("the answer was interrupted and no other host could continue it" + detail)
        return self.last or timeout_error("no replica could run the request in time")


def _record(sent: Answer, item: Item) -> None:
    if isinstance(item, Chunk):
        sent.add(item)
    elif isinstance(item, Restart):
        sent.clear()


def _continued(work: Work, sent: Answer) -> Work:
    """The job that continues ``sent`` on another route (a host that can continue)."""
    return Work(work.kind, work.model, work.continued(sent.text(), sent.tokens()), work.continue_needs(),
                work.continuable)


def _breached(peer: Peer, trace: str | None) -> Strike:
    """What a bound broken by ``peer``'s answer comes to here: a warning (its relay
    struck its host for it already, by the same rule)."""
    def strike(reason: str) -> None:
        log.warning("replica.breach", replica=peer.id, request_id=trace, reason=reason)

    return strike


def _bounded(bound: Bound, item: Item, stream: bool) -> Item:
    """One item from a replica, held to the answer's bounds as a host's would be:
    content in every chunk (a peer's relay sends no other) and no restart in a stream
    (the client has its first part already), else ProtocolError (a lost route); a
    broken bound is the explicit error (``Breach``)."""
    if isinstance(item, Restart):
        if stream:
            raise ProtocolError("a replica started a streamed answer over")
        bound.restart()
        return item
    if isinstance(item, Chunk) and not item.content:
        raise ProtocolError("a replica sent a chunk without content")
    bound.item(item)
    return item


FEDERATION = web.AppKey("federation", Federation)


def with_peers(app: web.Application, totals: dict[str, int], registry: Registry) -> dict[str, int]:
    """``totals`` of this replica's hosts, plus every live peer's (replicated mode: the
    dashboard, pool_status and the admin status count the whole pool, whichever replica
    a load balancer picked), with ``replicas``; unchanged in one process."""
    federation = app.get(FEDERATION)
    if federation is None:
        return totals
    out = dict(totals)
    for peer in federation.directory.peers.values():
        for name in TOTALS:
            out[name] = out.get(name, 0) + peer.totals.get(name, 0)
    out["models"] = len(registry.pool_models())
    out["replicas"] = 1 + len(federation.directory.peers)
    return out


async def start_federation(app: web.Application, config: CoordinatorConfig, relay: Relay,
                           registry: Registry) -> Federation:
    """Take this replica's place in the pool (replicated mode), on the Redis client the
    replica's parts share (``replicated.start`` opened it)."""
    from andy_host.coordinator.replication.wiring import REDIS

    redis: Any = app[REDIS]
    replica = config.replica_id or uuid.uuid4().hex[:12]
    directory = Directory(redis, replica, config.directory_ttl, config.replica_secret)
    federation = Federation(config, directory, relay, registry)
    federation.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app[FEDERATION] = federation
    log.info("replica.started", replica=replica)
    return federation


def advertise(app: web.Application, listening: str) -> None:
    """Tell the directory where this replica listens (once the server does)."""
    federation = app.get(FEDERATION)
    if federation is not None:
        federation.directory.url = (federation.config.replica_url or listening).rstrip("/")
        log.info("replica.listening", replica=federation.replica, url=federation.directory.url)
        if not federation.config.replica_url and urlsplit(listening).hostname in ("0.0.0.0", "::"):
            # every other replica would send its jobs for this one's hosts to itself
            log.warning("replica.url_unreachable", url=federation.directory.url,
                        fix="listening on every address, this replica cannot tell the others where to reach "
                            "it: set coordinator.replica_url (ANDY_HOST_COORDINATOR_REPLICA_URL), "
                            "e.g. http://10.0.0.5:8080")
