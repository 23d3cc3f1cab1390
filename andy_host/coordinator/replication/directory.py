"""The host directory in Redis: which replica holds each host, and what it offers.

Each replica publishes, every ``directory_interval``:

- ``andy:replica:{id}``: its URL and, per model, what its hosts offer now (hosts,
  slots, free slots, best measured speed, features, any loaded, any trusted), with a
  TTL of ``directory_ttl``: a replica that stops publishing (it died) leaves the
  directory by then, with everything it held;
- ``andy:hosts:{id}``: a hash of its hosts (host id -> name, models, capacity, load,
  measured speed, status), only the records that changed rewritten, the same TTL;
- its id in the set ``andy:replicas``, which readers prune of ids whose entry expired.

Every replica reads the others' entries at the same interval, so routing a request
needs no Redis call: the view is at most one interval old. The summaries are built
from the coordinator's own measurements and standing of its hosts (never a host's
claims), and a reader checks every field's type: an entry it cannot read is ignored.

Each replica entry is signed with an HMAC of ``replica_secret``: whoever can write to
Redis but does not hold the secret cannot point the pool at their own server (which
would receive the replica secret and clients' prompts). Unsigned or badly signed
entries are ignored and pruned.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from andy_host.coordinator.hosts.registry import Host
from andy_host.coordinator.pool.capacity import serving, slots
from andy_host.coordinator.pool.work import NEED_TOOLS, feature_needs

log = structlog.get_logger("andy_host.directory")

REPLICAS = "andy:replicas"
EMBED = "embed"  # in an offer's features: some host embeds with the model


def replica_key(replica: str) -> str:
    return f"andy:replica:{replica}"


def hosts_key(replica: str) -> str:
    return f"andy:hosts:{replica}"


@dataclass(frozen=True, slots=True)
class Offer:
    """What one replica's hosts offer for one model."""

    hosts: int
    capacity: int
    free: int
    tps: float
    loaded: bool
    trusted: bool
    features: frozenset[str]


@dataclass(frozen=True, slots=True)
class Peer:
    """Another replica, as its last directory entry describes it."""

    id: str
    url: str
    models: dict[str, Offer]
    totals: dict[str, int] = field(default_factory=dict)  # its hosts, serving hosts, slots, jobs in flight


TOTALS = ("hosts", "serving_hosts", "capacity", "in_flight")


def replica_totals(hosts: list[Host], now: float) -> dict[str, int]:
    """What a replica's entry says of all its hosts, for pool-wide counts."""
    return {"hosts": len(hosts), "serving_hosts": sum(1 for h in hosts if serving(h, now)),
            "capacity": slots(hosts, now), "in_flight": sum(len(h.jobs) for h in hosts)}


def _totals(raw: Any) -> dict[str, int]:
    """A peer's totals, each a count between 0 and 10 million (else left out)."""
    if not isinstance(raw, dict):
        return {}
    return {k: v for k in TOTALS if isinstance(v := raw.get(k), int) and not isinstance(v, bool)
            and 0 <= v <= 10_000_000}


def host_record(host: Host) -> dict[str, Any]:
    """A host's directory record: what the coordinator holding it knows and measured."""
    return {
        "name": host.name, "models": sorted(host.models), "loaded": sorted(host.loaded),
        "capacity": host.capacity, "load": len(host.jobs), "status": host.shown_status,
        "tps": host.health.tps, "ttft": host.health.ttft, "trusted": host.trusted,
    }


def offers(hosts: Iterable[Host], now: float) -> dict[str, dict[str, Any]]:
    """Per model, what the hosts that may take client jobs offer (pure)."""
    out: dict[str, dict[str, Any]] = {}
    for host in hosts:
        if host.status != "active" or host.trust.quarantined is not None:
            continue
        free = max(0, host.free) if host.health.admits(now, len(host.jobs)) else 0
        for name, info in host.models.items():
            offer = out.setdefault(name, {"hosts": 0, "capacity": 0, "free": 0, "tps": 0.0, "loaded": False,
                                          "trusted": False, "features": set()})
            offer["hosts"] += 1
            offer["capacity"] += host.capacity
            offer["free"] += free
            offer["tps"] = max(offer["tps"], host.health.tps or 0.0)
            offer["loaded"] = offer["loaded"] or name in host.loaded
            offer["trusted"] = offer["trusted"] or host.trusted
            offer["features"] |= host.features | ({NEED_TOOLS} if info.tools else set()) | (
                {EMBED} if info.embed else set())
    for offer in out.values():
        offer["features"] = sorted(offer["features"])
    return out


def sign(secret: str, payload: bytes) -> bytes:
    """``payload`` with its HMAC-SHA256 under the replicas' secret in front: ``hex.payload``."""
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest().encode() + b"." + payload


def verified(secret: str, raw: bytes | None) -> bytes | None:
    """The payload of a signed entry, or None when it is missing or not signed with ``secret``."""
    if raw is None:
        return None
    mac, _, payload = raw.partition(b".")
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(mac, expected):
        log.warning("directory.bad_signature", size=len(raw))
        return None
    return payload


def parse_peer(raw: bytes | None) -> Peer | None:
    """A replica's entry, or None when it is missing or not what a replica writes."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        models = {str(name): _offer(o) for name, o in data["models"].items()}
        return Peer(id=str(data["id"]), url=str(data["url"]), models=models, totals=_totals(data.get("totals")))
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("directory.bad_entry", size=len(raw))
        return None


def _offer(raw: dict[str, Any]) -> Offer:
    return Offer(hosts=int(raw["hosts"]), capacity=int(raw["capacity"]), free=int(raw["free"]),
                 tps=float(raw["tps"]), loaded=bool(raw["loaded"]), trusted=bool(raw["trusted"]),
                 features=frozenset(str(f) for f in raw["features"]))


def rank(peers: Iterable[Peer], model: str, kind: str, needs: frozenset[str], trusted_only: bool,
         exclude: set[str]) -> list[Peer]:
    """Replicas that could run this job, best first: free slots first, then a loaded
    model, then free slots times speed (pure)."""
    # a prompt's context need is not in a replica's entry: the replica asked checks it itself
    wanted = feature_needs(needs) | ({EMBED} if kind == "embed" else set())
    able = [(p, o) for p in peers if p.id not in exclude and (o := p.models.get(model)) is not None
            and wanted <= o.features and (o.trusted or not trusted_only)]
    able.sort(key=lambda po: (po[1].free > 0, po[1].loaded, po[1].free * max(po[1].tps, 1.0)), reverse=True)
    return [p for p, _ in able]


def _text(member: bytes | str) -> str:
    """A member of the replicas' set as text (bytes that are not UTF-8 cannot stop a reader)."""
    return member.decode(errors="replace") if isinstance(member, bytes) else str(member)


class Directory:
    """This replica's entries in Redis, and its view of the other replicas."""

    def __init__(self, redis: Any, replica: str, ttl: float, secret: str) -> None:
        self.redis = redis  # redis.asyncio.Redis
        self.replica, self.secret = replica, secret
        self.ttl_ms = max(1, int(ttl * 1000))
        self.url = ""  # set once the server listens
        self.peers: dict[str, Peer] = {}
        self._written: dict[str, bytes] = {}  # host id -> record last written

    async def publish(self, hosts: list[Host]) -> None:
        """Write this replica's entry and the host records that changed."""
        if not self.url:
            return
        now = time.monotonic()
        entry = sign(self.secret, orjson.dumps({"id": self.replica, "url": self.url, "at": time.time(),
                                                "models": offers(hosts, now), "totals": replica_totals(hosts, now)}))
        records = {h.id: orjson.dumps(host_record(h)) for h in hosts}
        changed = {k: v for k, v in records.items() if self._written.get(k) != v}
        gone = [k for k in self._written if k not in records]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(replica_key(self.replica), entry, px=self.ttl_ms)
            pipe.zadd(REPLICAS, {self.replica: time.time()})
            if changed:
                pipe.hset(hosts_key(self.replica), mapping=changed)
            if gone:
                pipe.hdel(hosts_key(self.replica), *gone)
            pipe.pexpire(hosts_key(self.replica), self.ttl_ms)
            await pipe.execute()
        self._written = records

    async def refresh(self) -> dict[str, Peer]:
        """Read the other replicas' entries; forget replicas whose entry expired."""
        members = await self.redis.zrange(REPLICAS, 0, -1)  # anything may be in the set: read, not trusted
        others = [(m, _text(m)) for m in members if _text(m) != self.replica]
        raws = await self.redis.mget([replica_key(i) for _, i in others]) if others else []
        peers: dict[str, Peer] = {}
        expired = []
        for (member, replica), raw in zip(others, raws, strict=True):
            peer = parse_peer(verified(self.secret, raw))
            if peer is None:
                expired.append(member)  # removed as stored, even when it is not text
            elif peer.id == replica:
                peers[replica] = peer
        if expired:
            await self.redis.zrem(REPLICAS, *expired)
        for replica in set(self.peers) - set(peers):
            log.info("directory.replica_gone", replica=replica)
        for replica in set(peers) - set(self.peers):
            log.info("directory.replica_seen", replica=replica, url=peers[replica].url)
        self.peers = peers
        return peers

    async def locate(self, host_id: str) -> str | None:
        """Which live replica holds this host now (None: none)."""
        for replica in [self.replica, *self.peers]:
            if await self.redis.hexists(hosts_key(replica), host_id):
                return replica
        return None

    async def withdraw(self) -> None:
        """Leave the directory at once (a clean stop): no request is sent here any more."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(replica_key(self.replica), hosts_key(self.replica))
            pipe.zrem(REPLICAS, self.replica)
            await pipe.execute()
