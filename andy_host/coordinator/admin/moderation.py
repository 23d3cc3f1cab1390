"""The admin's actions on hosts, applied by every running coordinator.

``coordinator hosts ban|release|kick`` (the CLI, or the admin HTTP API) write the
action to the store's ``admin_events``; each coordinator reads the new ones every
``flush_interval`` (the HTTP API at once) and applies them to the hosts it holds:

- ban: the host (and, when the ban went to its token, every host on that token) is
  disconnected with a fatal close code; the ban itself lives in the store and refuses
  the credential at every later hello;
- release: the host's quarantine ends;
- kick: the host is disconnected (when connected here) and its credential refused for
  the event's seconds (``kick_seconds`` unless the admin said otherwise): a token
  host's id on that token, an open-enrolment host's secret. Kicks are kept in memory:
  a restarted coordinator forgets them (a ban is kept).
"""

from __future__ import annotations

import structlog
from aiohttp import web

from andy_host.coordinator.hosts.enrolment import Kicks, credential_key
from andy_host.coordinator.hosts.registry import Host, Registry
from andy_host.coordinator.store.interface import AdminEvent, Store
from andy_host.coordinator.trust.checks import Checker
from andy_host.protocol import CLOSE_BANNED, CLOSE_KICKED

log = structlog.get_logger("andy_host.moderation")

MAX_KICK_SECONDS = 366 * 86400.0  # a kick is for a while; a ban is for good


class Moderation:
    def __init__(self, store: Store, registry: Registry, checker: Checker, kicks: Kicks,
                 kick_seconds: float = 600.0) -> None:
        self.store, self.registry, self.checker, self.kicks = store, registry, checker, kicks
        self.kick_seconds = kick_seconds
        self.last = -1  # set by start(): actions before this process started are in the store already

    async def start(self) -> None:
        self.last = await self.store.last_event()

    async def poll(self) -> None:
        for event in await self.store.events_after(self.last):
            self.last = event.id
            await self.apply(event)

    async def apply(self, event: AdminEvent) -> None:
        host = self.registry.hosts.get(event.target)
        if event.kind == "release":
            self.checker.release(event.target)
        elif event.kind == "ban":
            await self._ban(event, host)
        elif event.kind == "kick":
            await self._kick(event, host)

    async def _kick(self, event: AdminEvent, host: Host | None) -> None:
        try:
            seconds = float(event.reason) if event.reason else self.kick_seconds
        except ValueError:
            seconds = self.kick_seconds
        if not 0 < seconds <= MAX_KICK_SECONDS:  # NaN or out of range, from an older CLI or by hand
            seconds = min(max(self.kick_seconds, 1.0), MAX_KICK_SECONDS)
        credential = await self.store.host_credential(event.target)
        if credential is not None:
            token_id, secret_hash = credential
        elif host is not None:
            token_id, secret_hash = host.token_id, host.secret_hash
        else:
            return
        self.kicks.kick(credential_key(token_id, secret_hash, event.target), seconds)
        log.warning("host.kicked", host_id=event.target, seconds=seconds, connected=host is not None)
        if host is not None:
            await self._drop(host, CLOSE_KICKED, f"kicked by the admin; retry in {seconds:.0f}s")

    async def _ban(self, event: AdminEvent, host: Host | None) -> None:
        credential = await self.store.host_credential(event.target)
        token_id = credential[0] if credential else None
        reason = f"banned by the admin: {event.reason}" if event.reason else "banned by the admin"
        for other in list(self.registry.hosts.values()):
            if other is host or (token_id is not None and other.token_id == token_id):
                await self._drop(other, CLOSE_BANNED, reason)

    async def _drop(self, host: Host, code: int, reason: str) -> None:
        log.warning("host.dropped_by_admin", host_id=host.id, reason=reason)
        self.registry.remove(host, reason)
        await host.close(code, reason)


MODERATION = web.AppKey("moderation", Moderation)
