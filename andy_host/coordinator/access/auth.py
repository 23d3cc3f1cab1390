"""Who may call what, and how often.

Chat completions need no key: ``anon_per_minute`` requests per client address. With a
key, chat uses the key's per-minute limit. Models, embeddings and pool status need a
key (401 ``invalid_api_key`` otherwise) unless ``anonymous_endpoints`` opens them, each
with its own per-address count (by default only pool status's public totals); every key
has a daily limit (UTC days).
A key linked to a host token gets its limits raised per ``credit_tokens`` tokens that
hosts with that token served. The client address is the socket's, or the last
untrusted hop of ``X-Forwarded-For`` (over all its header lines) when the socket is
a proxy listed in ``trusted_proxies``; limits count per address group (IPv6 /64).
429s carry ``Retry-After`` and every limited answer carries ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset``. A request that fails on the pool's
side is refunded.

A revoked key gets a 401 ``key_revoked`` saying when (only the key's holder can ask).
A key may expire (401 saying so) and may be scoped to model patterns
(keyscope.py): another model is a 403 ``model_not_allowed`` naming it, and model
listings show only the key's models. Changes from ``keys update`` reach a running
coordinator as revocations do (within ``key_recheck``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from andy_host.config import CoordinatorConfig, anonymous_limits
from andy_host.coordinator.access.credentials import API_KEY_PREFIX, well_formed
from andy_host.coordinator.access.keyscope import allows, expired, when_text
from andy_host.coordinator.access.meter import Ask, LocalMeter, Meter, Taken
from andy_host.coordinator.access.ratelimit import Decision
from andy_host.coordinator.store.interface import ApiKey, Store, StoreUnavailable, utc_day
from andy_host.coordinator.web.addresses import address_group, client_address, parse_networks
from andy_host.coordinator.web.context import context
from andy_host.errors import APIError

log = structlog.get_logger("andy_host.auth")

KEYED_ENDPOINTS = {"models", "embeddings", "pool_status", "ollama_models", "ollama_embed"}
# Endpoints that generate text: free within the anonymous limit, and under a key's
# per-minute limit as well as its daily one.
GENERATING = {"chat", "completions", "ollama_chat", "ollama_generate"}


def invalid_api_key(message: str, code: str = "invalid_api_key") -> APIError:
    return APIError(401, message, type="invalid_request_error", code=code,
                    headers={"WWW-Authenticate": 'Bearer realm="andy-host"'})


def model_not_allowed(model: str) -> APIError:
    return APIError(403, f"This API key may not use the model `{model}`: ask the pool's admin to add it to "
                         "the key's models. GET /api/andy/v1/models lists the models it may use.",
                    code="model_not_allowed", param="model")


def check_model(request: web.Request, model: str) -> None:
    """403 when the request's key is scoped to models that exclude ``model``."""
    if not allows(context(request).key_scope, model):
        raise model_not_allowed(model)


def visible_models(request: web.Request, names: Iterable[str]) -> list[str]:
    """The served names the request's key may use (all of them without a scope)."""
    scope = context(request).key_scope
    return [n for n in names if allows(scope, n)]


@dataclass(slots=True)
class Permit:
    """An admitted request: its rate-limit headers and how to give its place back."""

    headers: dict[str, str] = field(default_factory=dict)
    ask: Ask = field(default_factory=Ask)
    taken: Taken = field(default_factory=lambda: Taken(""))


class Access:
    def __init__(self, store: Store, config: CoordinatorConfig, meter: Meter | None = None) -> None:
        self.store = store
        self.config = config
        self.meter = meter or LocalMeter(store, config.rate_window)  # redis_limits.RedisMeter for replicas
        self.trusted = parse_networks(config.trusted_proxies)
        self.anonymous = anonymous_limits(config)  # keyed endpoints opened to clients without a key
        self._credits: dict[int, tuple[int, float]] = {}  # key id -> (credit, when read)

    # identity ----------------------------------------------------------------------

    def client_address(self, request: web.Request) -> str:
        """The client's address group (see addresses.py): what anonymous limits count."""
        address = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted)
        return address_group(address, self.config.address_group_v4, self.config.address_group_v6)

    async def authenticate(self, request: web.Request) -> ApiKey | None:
        """The andy key presented; None when none was; 401 for a wrong or revoked one.

        OpenAI SDKs always send some key: a bearer value that is not an andy key at all
        (``none``, ``sk-…``, empty) counts as no key, so anonymous chat keeps working.
        """
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret.startswith(API_KEY_PREFIX):
            return None
        try:
            key = await self.store.find_key(secret, revoked=True)  # a revoked key's holder is told so
        except StoreUnavailable as exc:
            log.warning("auth.store_unavailable", error=str(exc))
            raise APIError(503, "The pool cannot check this API key now (its database is unreachable); "
                                "retry in a few seconds.", type="server_error", code="key_store_unavailable",
                           headers={"Retry-After": "5"}) from None
        if key is None:
            if not well_formed(secret, API_KEY_PREFIX):
                raise invalid_api_key("Malformed API key (checksum mismatch): check it was copied whole.")
            raise invalid_api_key(
                "Incorrect API key provided. Keys look like andy_sk_…; ask the pool's admin for one."
            )
        if key.revoked is not None:
            raise invalid_api_key(f"This API key was revoked on {when_text(key.revoked)}; ask the pool's admin "
                                  "for a new one.", code="key_revoked")
        if expired(key.expires):
            raise invalid_api_key(f"This API key expired on {when_text(key.expires)}; ask the pool's admin "
                                  "to extend it (keys update --expires) or for a new one.")
        return key

    # limits ------------------------------------------------------------------------

    async def _credit(self, key: ApiKey, now: float) -> int:
        """Units of credit the key's host token earned (read at most every flush_interval)."""
        if key.host_token_id is None or self.config.credit_tokens <= 0:
            return 0
        kept = self._credits.get(key.id)
        if kept is not None and now - kept[1] < self.config.flush_interval:
            return kept[0]
        credit = await self.store.tokens_served_by_token(key.host_token_id) // self.config.credit_tokens
        self._credits[key.id] = (credit, now)
        return credit

    async def admit(self, request: web.Request, endpoint: str) -> Permit:
        """Admit the request or raise 401/429; counts it against the right limits."""
        key = await self.authenticate(request)
        opened = self.anonymous.get(endpoint)
        if key is None and endpoint in KEYED_ENDPOINTS and self.config.require_keys and opened is None:
            raise invalid_api_key(
                f"This endpoint needs an API key (Authorization: Bearer andy_sk_…). Chat and text "
                f"completions work without one, at {self.config.anon_per_minute} requests per minute."
            )
        ctx = context(request)
        ctx.client = f"key:{key.id}" if key is not None else "ip:" + self.client_address(request)
        ctx.trusted_only = key is not None and key.trusted_only
        ctx.key_scope = tuple(key.models) if key is not None else ()
        ctx.keyless = key is None and self.config.require_keys
        if key is not None:
            return await self._admit_key(key, endpoint, time.time())
        if endpoint in KEYED_ENDPOINTS and opened is not None and self.config.require_keys:
            group, limit = opened  # opened by anonymous_endpoints: a count of its own per address
            return await self._admit_anonymous(f"{ctx.client}/{group}", limit, time.time())
        return await self._admit_anonymous(ctx.client, self.config.anon_per_minute, time.time())

    async def _admit_anonymous(self, who: str, per_minute: int, now: float) -> Permit:
        ask = Ask(who=who, per_minute=per_minute)
        taken = await self.meter.take(ask, now)
        assert taken.minute is not None
        self._raise_if_limited(taken.minute, "per minute for clients without an API key")
        return Permit(headers=_headers(taken.minute), ask=ask, taken=taken)

    async def _admit_key(self, key: ApiKey, endpoint: str, now: float) -> Permit:
        credit = await self._credit(key, now)
        daily_limit = key.daily_limit + credit * self.config.credit_daily
        ask = Ask(key_id=key.id, day=utc_day(now), daily_limit=daily_limit)
        if endpoint in GENERATING:  # generation also has the key's per-minute limit
            ask.who, ask.per_minute = f"key:{key.id}", key.per_minute + credit * self.config.credit_per_minute
        taken = await self.meter.take(ask, now)
        assert taken.day is not None
        self._raise_if_limited(taken.day, "per day for this API key")
        tighter = taken.day
        if taken.minute is not None:
            self._raise_if_limited(taken.minute, "per minute for this API key")
            if taken.minute.remaining < tighter.remaining:
                tighter = taken.minute
        return Permit(headers=_headers(tighter), ask=ask, taken=taken)

    @staticmethod
    def _raise_if_limited(decision: Decision, what: str) -> None:
        if not decision.allowed:
            raise _limited(decision, what)

    async def refund(self, permit: Permit) -> None:
        """The pool failed this request: it does not count against the client."""
        if permit.taken.allowed and (permit.ask.who is not None or permit.ask.key_id is not None):
            await self.meter.refund(permit.ask, permit.taken)

    async def flush(self) -> None:
        await self.meter.flush()


def _headers(decision: Decision) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(max(0, decision.remaining)),
        "RateLimit-Reset": str(max(0, decision.reset)),
    }


def _limited(decision: Decision, what: str) -> APIError:
    return APIError(
        429,
        f"Rate limit reached: {decision.limit} requests {what}. Retry after {decision.retry_after}s.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers={**_headers(decision), "Retry-After": str(decision.retry_after)},
    )


ACCESS = web.AppKey("access", Access)
