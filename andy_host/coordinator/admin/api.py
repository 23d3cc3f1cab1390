"""The admin HTTP API under /api/andy/admin/ (keys: create, list, update, revoke; host
tokens; hosts and their standing, the ledger, release, ban, kick, checks; the live
status), guarded by the config's ``admin_token``; off when that is empty. Every CLI
admin command has its route here; the CLI's write the store, these the store and then
apply the action at once."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from andy_host.coordinator.access.credentials import DISPLAY_LEN, same
from andy_host.coordinator.access.keyscope import NEVER, ScopeError, check_expires, parse_expires, parse_models
from andy_host.coordinator.admin.listing import key_listing, token_listing
from andy_host.coordinator.admin.moderation import MAX_KICK_SECONDS, MODERATION
from andy_host.coordinator.hosts.credit import add_credit_routes
from andy_host.coordinator.hosts.registry import REGISTRY, Host
from andy_host.coordinator.observe.livestatus import live_status
from andy_host.coordinator.replication import wiring as replicated
from andy_host.coordinator.store.interface import STORE, AmbiguousIdent, KeyChanges
from andy_host.coordinator.trust.checks import CHECKER
from andy_host.coordinator.trust.escrow import Escrow, figures
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.json import read_json
from andy_host.errors import APIError, bad_request

PREFIX = "/api/andy/admin"


def has_admin_token(request: web.Request) -> bool:
    """The request carries the configured admin token (never true when none is set)."""
    token = request.app[CONFIG].admin_token
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token and given and same(given, token))


def _guard(request: web.Request) -> None:
    if not request.app[CONFIG].admin_token:
        raise APIError(404, "The admin API is off: set coordinator.admin_token to enable it.", code="admin_disabled")
    if not has_admin_token(request):
        raise APIError(401, "The admin API needs `Authorization: Bearer <admin_token>`.", code="invalid_admin_token")


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json(request)


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise bad_request("`name` is required: a string of at most 200 characters", param="name")
    return name


MAX_LIMIT = 2**31 - 1


def _positive(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise bad_request(f"`{key}` must be an integer from 1 to {MAX_LIMIT}", param=key)
    return value


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value or len(value) > 200):
        raise bad_request(f"`{key}` must be a non-empty string", param=key)
    return value


def _expires(body: dict[str, Any]) -> float | None:
    """``expires``: a duration (``30d``), an ISO date, seconds since the epoch, or
    ``never``/null (no expiry). Absent: None."""
    if "expires" not in body:
        return None
    value = body["expires"]
    if value is None:
        return NEVER
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value == 0:
            return NEVER
        try:  # seconds since the epoch: in the future, before the year 10000 (not milliseconds)
            return check_expires(float(value))
        except (ScopeError, OverflowError) as exc:
            raise bad_request(str(exc) if isinstance(exc, ScopeError) else "`expires` is out of range",
                              param="expires") from None
    if not isinstance(value, str) or len(value) > 64:
        raise bad_request("`expires` must be a duration (30d), an ISO date, a time in seconds or null",
                          param="expires")
    try:
        return parse_expires(value)
    except ScopeError as exc:
        raise bad_request(str(exc), param="expires") from None


def _models(body: dict[str, Any]) -> tuple[str, ...] | None:
    """``models``: a list of model patterns (["*"] or null: every model; [] is refused).
    Absent: None."""
    if "models" not in body:
        return None
    value = body["models"]
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_request("`models` must be a list of model names or patterns", param="models")
    try:
        return parse_models(value)
    except ScopeError as exc:
        raise bad_request(str(exc), param="models") from None


async def _one(change: Awaitable[bool]) -> bool:
    """A store change by id or listed prefix; 400 naming the ids when a prefix is shared."""
    try:
        return await change
    except AmbiguousIdent as exc:
        raise bad_request(str(exc), param="ident", code="ambiguous_prefix") from None


async def list_keys(request: web.Request) -> web.Response:
    _guard(request)
    return web.json_response({"keys": [key_listing(row) for row in await request.app[STORE].list_keys()]})


async def create_key(request: web.Request) -> web.Response:
    _guard(request)
    body = await _body(request)
    config = request.app[CONFIG]
    try:
        secret, key_id = await request.app[STORE].create_key(
            _name(body),
            _positive(body, "daily_limit", config.default_daily_limit),
            _positive(body, "per_minute", config.default_per_minute),
            _optional_text(body, "host_token"),
            trusted_only=_flag(body, "trusted_only"),
            expires=_expires(body) or None,
            models=_models(body) or (),
        )
    except KeyError as exc:  # no such host token, or a prefix several share
        raise bad_request(str(exc.args[0]), param="host_token") from None
    return web.json_response({"id": key_id, "key": secret, "note": "shown once; store it now"}, status=201)


async def update_key(request: web.Request) -> web.Response:
    """Change a key's name, limits, expiry, models or trusted-only (absent fields stay)."""
    _guard(request)
    body = await _body(request)
    known = {"name", "daily_limit", "per_minute", "expires", "models", "trusted_only"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise bad_request(f"unknown field `{unknown[0]}`; a key has {', '.join(sorted(known))}", param=unknown[0])
    changes = KeyChanges(
        name=_name(body) if "name" in body else None,
        daily_limit=_positive(body, "daily_limit", 1) if "daily_limit" in body else None,
        per_minute=_positive(body, "per_minute", 1) if "per_minute" in body else None,
        expires=_expires(body), models=_models(body),
        trusted_only=_flag(body, "trusted_only") if "trusted_only" in body else None,
    )
    ident = request.match_info["ident"]
    if not await _one(request.app[STORE].update_key(ident, changes)):
        raise APIError(404, f"No live key {ident!r}.", code="not_found")
    listed = [k for k in await request.app[STORE].list_keys()
              if k["revoked"] is None and (k["prefix"] == ident[:DISPLAY_LEN] or str(k["id"]) == ident)]
    return web.json_response({"updated": True, "key": listed[0] if listed else None})


async def revoke_key(request: web.Request) -> web.Response:
    _guard(request)
    if not await _one(request.app[STORE].revoke_key(request.match_info["ident"])):
        raise APIError(404, "No such live key.", code="not_found")
    return web.json_response({"revoked": True})


async def list_tokens(request: web.Request) -> web.Response:
    _guard(request)
    return web.json_response({"tokens": [token_listing(row) for row in await request.app[STORE].list_tokens()]})


async def create_token(request: web.Request) -> web.Response:
    _guard(request)
    body = await _body(request)
    secret, token_id = await request.app[STORE].create_token(_name(body), trusted=_flag(body, "trusted"))
    return web.json_response({"id": token_id, "token": secret, "note": "shown once; store it now"}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    _guard(request)
    if not await _one(request.app[STORE].revoke_token(request.match_info["ident"])):
        raise APIError(404, "No such live host token.", code="not_found")
    return web.json_response({"revoked": True})


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise bad_request(f"`{key}` must be true or false", param=key)
    return value


async def hosts(request: web.Request) -> web.Response:
    """Every host that did work (the ledger) or is connected now, with its standing and
    its escrow (what is held for checks, credited and voided)."""
    _guard(request)
    store, registry = request.app[STORE], request.app[REGISTRY]
    standings = await store.standings()
    rows = {row["host_id"]: row for row in await store.ledger()}
    for live in registry.hosts.values():
        rows.setdefault(live.id, {"host_id": live.id, "name": live.name, "host_token": None, "requests": 0,
                                  "tokens": 0, "failures": 0, "connected_seconds": 0.0, "last_seen": None})
    return web.json_response({"hosts": [_host_row(row, standings, registry.hosts.get(row["host_id"]),
                                                  registry.escrows.get(row["host_id"]))
                                        for row in rows.values()]})


def _host_row(row: dict[str, Any], standings: dict[str, dict[str, Any]], live: Host | None,
              held: Escrow | None) -> dict[str, Any]:
    """A ledger row with its standing and, for a host this coordinator holds an escrow
    of (connected, or it earned since the coordinator started), ``escrow``: its held,
    credited and voided jobs and tokens (escrow.py); null otherwise."""
    standing = standings.get(row["host_id"], {})
    if live is not None:  # the live standing is newer than the saved one
        standing = {**standing, "score": live.trust.score, "strikes": live.trust.strikes,
                    "checks_passed": live.trust.checks_passed, "checks_failed": live.trust.checks_failed,
                    "checks_doubted": live.trust.checks_doubted, "checking": live.checking,
                    "quarantined": live.trust.quarantined, "trusted": live.trusted}
    return {**row, **standing, "connected": live is not None, "status": live.shown_status if live else "offline",
            "host_reason": live.reason if live else None, "escrow": None if held is None else figures(held)}


async def _known_host(request: web.Request) -> str:
    host_id = request.match_info["host_id"]
    if await request.app[STORE].host_credential(host_id) is None:
        raise APIError(404, f"No host {host_id!r} has ever joined this pool.", code="not_found")
    return host_id


async def release_host(request: web.Request) -> web.Response:
    _guard(request)
    host_id = await _known_host(request)
    await request.app[STORE].release_host(host_id)
    await request.app[MODERATION].poll()
    await replicated.announce(request.app)  # the other replicas apply it at once
    return web.json_response({"released": host_id})


async def ban_host(request: web.Request) -> web.Response:
    _guard(request)
    host_id = await _known_host(request)
    body = await _body(request) if request.can_read_body else {}
    reason = _optional_text(body, "reason") or "banned by the admin"
    banned = await request.app[STORE].ban_host(host_id, reason)
    await request.app[MODERATION].poll()
    await replicated.announce(request.app)  # the other replicas apply it at once
    return web.json_response({"banned": banned})


async def kick_host(request: web.Request) -> web.Response:
    """End a host's connection and refuse its credential for ``seconds`` (default
    ``kick_seconds``); a kick reaches every coordinator through the store."""
    _guard(request)
    host_id = await _known_host(request)
    body = await _body(request) if request.can_read_body else {}
    seconds = body.get("seconds", request.app[CONFIG].kick_seconds)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_KICK_SECONDS:
        raise bad_request("`seconds` must be a number of seconds, at most a year", param="seconds")
    connected = host_id in request.app[REGISTRY].hosts
    await request.app[STORE].add_event("kick", host_id, str(float(seconds)))
    await request.app[MODERATION].poll()
    await replicated.announce(request.app)  # the other replicas apply it at once
    return web.json_response({"kicked": host_id, "seconds": seconds, "was_connected": connected})


async def status(request: web.Request) -> web.Response:
    """The live totals: hosts by status, models and capacity, queue, rates."""
    _guard(request)
    return web.json_response(live_status(request.app))


async def check_host(request: web.Request) -> web.Response:
    """Run answer checks of a connected host now and return their verdicts."""
    _guard(request)
    host = request.app[REGISTRY].hosts.get(request.match_info["host_id"])
    if host is None:
        raise APIError(404, "That host is not connected to this coordinator.", code="not_found")
    body = await _body(request) if request.can_read_body else {}
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        raise bad_request("`count` must be an integer from 1 to 1000", param="count")
    verdicts = [await request.app[CHECKER].check_now(host) for _ in range(count)]
    return web.json_response({"passed": verdicts.count("pass"), "doubted": verdicts.count("doubt"),
                              "failed": verdicts.count("fail"), "inconclusive": verdicts.count(None),
                              "quarantined": host.trust.quarantined})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/keys", list_keys)
    app.router.add_post(f"{PREFIX}/keys", create_key)
    app.router.add_patch(f"{PREFIX}/keys/{{ident}}", update_key)
    app.router.add_delete(f"{PREFIX}/keys/{{ident}}", revoke_key)
    app.router.add_get(f"{PREFIX}/tokens", list_tokens)
    app.router.add_post(f"{PREFIX}/tokens", create_token)
    app.router.add_delete(f"{PREFIX}/tokens/{{ident}}", revoke_token)
    app.router.add_get(f"{PREFIX}/hosts", hosts)
    app.router.add_post(f"{PREFIX}/hosts/{{host_id}}/release", release_host)
    app.router.add_post(f"{PREFIX}/hosts/{{host_id}}/ban", ban_host)
    app.router.add_post(f"{PREFIX}/hosts/{{host_id}}/check", check_host)
    app.router.add_post(f"{PREFIX}/hosts/{{host_id}}/kick", kick_host)
    app.router.add_get(f"{PREFIX}/status", status)
    # not an admin route: a host's own escrow, to its own credential (hosts/credit.py);
    # added here, with the host listing it mirrors
    add_credit_routes(app)
