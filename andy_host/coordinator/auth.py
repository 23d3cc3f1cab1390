"""Who may call what, and how often.

Chat completions need no key: ``anon_per_minute`` requests per client address. With a
key, chat uses the key's per-minute limit. Models, embeddings and pool status need a
key (401 ``invalid_api_key`` otherwise), and every key has a daily limit (UTC days).
A key linked to a host token gets its limits raised per ``credit_tokens`` tokens that
hosts with that token served. The client address is the socket's, or the last
untrusted hop of ``X-Forwarded-For`` (over all its header lines) when the socket is
a proxy listed in ``trusted_proxies``; limits count per address group (IPv6 /64).
429s carry ``Retry-After`` and every limited answer carries ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset``. A request that fails on the pool's
side is refunded.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

from andy_host.config import CoordinatorConfig
from andy_host.coordinator.addresses import address_group, client_address, parse_networks
from andy_host.coordinator.ratelimit import Decision, SlidingWindow
from andy_host.coordinator.secrets import API_KEY_PREFIX, well_formed
from andy_host.coordinator.store import ApiKey, Store, utc_day
from andy_host.errors import APIError

KEYED_ENDPOINTS = {"models", "embeddings", "pool_status"}
CLIENT = "andy_client"  # request key: who the request is from, for fair queueing
TRUSTED_ONLY = "andy_trusted_only"  # request key: the key keeps its requests on trusted hosts


def invalid_api_key(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="andy-host"'})


def _seconds_to_utc_midnight(now: float) -> int:
    return max(1, math.ceil(86400 - now % 86400))


@dataclass(slots=True)
class Permit:
    """An admitted request: its rate-limit headers and how to give its place back."""

    headers: dict[str, str] = field(default_factory=dict)
    window_who: str | None = None
    stamp: float = 0.0
    key_id: int | None = None
    day: str = ""


class Access:
    def __init__(self, store: Store, config: CoordinatorConfig) -> None:
        self.store = store
        self.config = config
        self.minute = SlidingWindow(config.rate_window)
        self.pending: defaultdict[tuple[int, str], int] = defaultdict(int)
        self.stored: dict[tuple[int, str], int] = {}  # usage already in the store, read once per key and day
        self.last_used: dict[int, float] = {}
        self.trusted = parse_networks(config.trusted_proxies)

    # identity ----------------------------------------------------------------------

    def client_address(self, request: web.Request) -> str:
        """The client's address group (see addresses.py): what anonymous limits count."""
        address = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.trusted)
        return address_group(address, self.config.address_group_v4, self.config.address_group_v6)

    def authenticate(self, request: web.Request) -> ApiKey | None:
        """The andy key presented; None when none was; 401 for a wrong or revoked one.

        OpenAI SDKs always send some key: a bearer value that is not an andy key at all
        (``none``, ``sk-…``, empty) counts as no key, so anonymous chat keeps working.
        """
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret.startswith(API_KEY_PREFIX):
            return None
        key = self.store.find_key(secret)
        if key is None:
            if not well_formed(secret, API_KEY_PREFIX):
                raise invalid_api_key("Malformed API key (checksum mismatch): check it was copied whole.")
            raise invalid_api_key(
                "Incorrect API key provided. Keys look like andy_sk_…; ask the pool's admin for one."
            )
        return key

    # limits ------------------------------------------------------------------------

    def _credit(self, key: ApiKey) -> int:
        if key.host_token_id is None or self.config.credit_tokens <= 0:
            return 0
        return self.store.tokens_served_by_token(key.host_token_id) // self.config.credit_tokens

    def admit(self, request: web.Request, endpoint: str) -> Permit:
        """Admit the request or raise 401/429; counts it against the right limits."""
        key = self.authenticate(request)
        if key is None and endpoint in KEYED_ENDPOINTS and self.config.require_keys:
            raise invalid_api_key(
                f"This endpoint needs an API key (Authorization: Bearer andy_sk_…). Chat completions "
                f"work without one, at {self.config.anon_per_minute} requests per minute."
            )
        now = time.time()
        permit = Permit()
        request[CLIENT] = f"key:{key.id}" if key is not None else "ip:" + self.client_address(request)
        request[TRUSTED_ONLY] = key is not None and key.trusted_only
        if key is None:
            who, limit = "ip:" + self.client_address(request), self.config.anon_per_minute
            minute = self.minute.check(who, limit, now)
            self._raise_if_limited(minute, "per minute for clients without an API key")
            permit.window_who, permit.stamp = who, minute.stamp
            permit.headers = _headers(minute)
            return permit
        credit = self._credit(key)
        daily_limit = key.daily_limit + credit * self.config.credit_daily
        day = utc_day(now)
        if (key.id, day) not in self.stored:  # this process is the only writer of usage
            self.stored[(key.id, day)] = self.store.usage_today(key.id)
        used = self.stored[(key.id, day)] + self.pending[(key.id, day)]
        if used >= daily_limit:
            reset = _seconds_to_utc_midnight(now)
            raise _limited(Decision(False, daily_limit, 0, reset), "per day for this API key")
        daily = Decision(True, daily_limit, daily_limit - used - 1, _seconds_to_utc_midnight(now))
        tighter = daily
        if endpoint == "chat":  # chat also has the key's per-minute limit
            who = f"key:{key.id}"
            minute = self.minute.check(who, key.per_minute + credit * self.config.credit_per_minute, now)
            self._raise_if_limited(minute, "per minute for this API key")
            permit.window_who, permit.stamp = who, minute.stamp
            if minute.remaining < daily.remaining:
                tighter = minute
        self.pending[(key.id, day)] += 1
        self.last_used[key.id] = now
        permit.headers = _headers(tighter)
        permit.key_id, permit.day = key.id, day
        return permit

    @staticmethod
    def _raise_if_limited(decision: Decision, what: str) -> None:
        if not decision.allowed:
            raise _limited(decision, what)

    def refund(self, permit: Permit) -> None:
        """The pool failed this request: it does not count against the client."""
        if permit.window_who is not None:
            self.minute.refund(permit.window_who, permit.stamp)
        if permit.key_id is not None and self.pending[(permit.key_id, permit.day)] > 0:
            self.pending[(permit.key_id, permit.day)] -= 1

    def flush(self) -> None:
        if self.pending or self.last_used:
            self.store.add_usage(dict(self.pending), dict(self.last_used))
            for slot, count in self.pending.items():
                if slot in self.stored:
                    self.stored[slot] += count
            self.pending.clear()
            self.last_used.clear()
            today = utc_day()
            self.stored = {slot: n for slot, n in self.stored.items() if slot[1] == today}


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
