"""Who a request comes from, for fair queueing (never sent to hosts)."""

from __future__ import annotations

import hashlib

from aiohttp import web


def client_id(request: web.Request) -> str:
    """The API key's hash when one is given, else the peer address."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer ") and len(auth) > 7:
        return "key:" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:16]
    return "ip:" + (request.remote or "unknown")
