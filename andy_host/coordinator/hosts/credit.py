"""``GET /api/andy/hosts/{host_id}/credit``: a host's own escrow (escrow.py), for its
contributor (``andy-host status`` asks it).

The caller proves the host id with the credential bound to it (enrolment.py), the one
its hello presents: ``Authorization: Bearer <host token>`` for an id registered with a
host token, ``Bearer <host secret>`` (the ``andy_hs_…`` secret the welcome issued, kept
in the agent's state directory) for an open-enrolment one. Anything else, an unknown id
included, is the same 401, so the endpoint tells nobody which ids exist. Every host
on one token shares that credential (a holder of the token may join as any of them),
so each of them may read the others' figures; no other host, client or anonymous
caller reads any host's. A banned host is refused (403). The answer holds only
counts: what this coordinator holds for checks, credited and voided for the id since
it started (zeros for an id it has none of; each replica of a replicated pool answers
for the hosts connected to it). Rate-limited as an anonymous request (per address,
``anon_per_minute``)."""

from __future__ import annotations

from aiohttp import web

from andy_host.coordinator.access import credentials as sec
from andy_host.coordinator.access.limits import limited
from andy_host.coordinator.hosts.enrolment import Identity
from andy_host.coordinator.hosts.registry import REGISTRY
from andy_host.coordinator.store.interface import STORE, Store, StoreUnavailable
from andy_host.coordinator.trust.escrow import figures
from andy_host.errors import APIError
from andy_host.protocol import MAX_ID_LEN, MAX_SECRET_LEN

CREDIT_PATH = "/api/andy/hosts/{host_id}/credit"


def credit_path(host_id: str) -> str:
    return CREDIT_PATH.format(host_id=host_id)


def _refused() -> APIError:
    return APIError(401, "This needs the host's own credential: `Authorization: Bearer <host token or host secret>` "
                         "of the host id in the path.", code="invalid_host_credential",
                    headers={"WWW-Authenticate": 'Bearer realm="andy-host hosts"'})


async def proof(store: Store, identity: Identity, given: str) -> tuple[bool, str | None]:
    """Does ``given`` prove ``identity`` as a hello would (its token, or its secret), and
    the ban on it (the host's, or its token's), if any?"""
    if identity.token_id is not None:
        token = await store.find_token(given)
        if token is None or token.id != identity.token_id:
            return False, None
        return True, identity.banned or token.banned
    proven = identity.secret_hash is not None and sec.same(sec.digest(given), identity.secret_hash)
    return proven, identity.banned


@limited("host_credit")
async def host_credit(request: web.Request) -> web.Response:
    """The host's held, credited and voided jobs and tokens, to its own credential."""
    host_id = request.match_info["host_id"]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given or len(given) > MAX_SECRET_LEN or len(host_id) > MAX_ID_LEN:
        raise _refused()
    store = request.app[STORE]
    try:
        identity = await store.identity(host_id)
        proven, banned = (False, None) if identity is None else await proof(store, identity, given)
    except StoreUnavailable:
        raise APIError(503, "The pool cannot check this credential now (its database is unreachable); retry in a "
                            "few seconds.", type="server_error", code="store_unavailable",
                       headers={"Retry-After": "5"}) from None
    if not proven:
        raise _refused()
    if banned:
        raise APIError(403, f"This host is banned: {banned}", code="host_banned")
    registry = request.app[REGISTRY]
    live = registry.hosts.get(host_id)
    return web.json_response({
        "host_id": host_id, "connected": live is not None,
        "quarantined": live is not None and live.trust.quarantined is not None,
        **figures(registry.escrows.get(host_id)),
    })


def add_credit_routes(app: web.Application) -> None:
    app.router.add_get(CREDIT_PATH, host_credit)
