"""The admin HTTP API under /api/andy/admin/ (keys, host tokens, the ledger),
guarded by the config's ``admin_token``; off when that is empty."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from andy_host.coordinator.httputil import read_json
from andy_host.coordinator.secrets import same
from andy_host.coordinator.state import CONFIG, STORE
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


async def list_keys(request: web.Request) -> web.Response:
    _guard(request)
    return web.json_response({"keys": request.app[STORE].list_keys()})


async def create_key(request: web.Request) -> web.Response:
    _guard(request)
    body = await _body(request)
    config = request.app[CONFIG]
    try:
        secret, key_id = request.app[STORE].create_key(
            _name(body),
            _positive(body, "daily_limit", config.default_daily_limit),
            _positive(body, "per_minute", config.default_per_minute),
            _optional_text(body, "host_token"),
        )
    except KeyError as exc:
        raise bad_request(str(exc), param="host_token") from None
    return web.json_response({"id": key_id, "key": secret, "note": "shown once; store it now"}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    _guard(request)
    if not request.app[STORE].revoke_key(request.match_info["ident"]):
        raise APIError(404, "No such live key.", code="not_found")
    return web.json_response({"revoked": True})


async def list_tokens(request: web.Request) -> web.Response:
    _guard(request)
    return web.json_response({"tokens": request.app[STORE].list_tokens()})


async def create_token(request: web.Request) -> web.Response:
    _guard(request)
    secret, token_id = request.app[STORE].create_token(_name(await _body(request)))
    return web.json_response({"id": token_id, "token": secret, "note": "shown once; store it now"}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    _guard(request)
    if not request.app[STORE].revoke_token(request.match_info["ident"]):
        raise APIError(404, "No such live host token.", code="not_found")
    return web.json_response({"revoked": True})


async def ledger(request: web.Request) -> web.Response:
    _guard(request)
    return web.json_response({"hosts": request.app[STORE].ledger()})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/keys", list_keys)
    app.router.add_post(f"{PREFIX}/keys", create_key)
    app.router.add_delete(f"{PREFIX}/keys/{{ident}}", revoke_key)
    app.router.add_get(f"{PREFIX}/tokens", list_tokens)
    app.router.add_post(f"{PREFIX}/tokens", create_token)
    app.router.add_delete(f"{PREFIX}/tokens/{{ident}}", revoke_token)
    app.router.add_get(f"{PREFIX}/hosts", ledger)
