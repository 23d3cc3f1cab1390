"""CORS for browser clients: off unless ``cors_origins`` lists origins ("*": any).

Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) to an API path are
answered 204 with the methods, the headers asked for and ``cors_max_age``; answers to
an allowed origin carry ``Access-Control-Allow-Origin`` and expose the request id and
rate-limit headers. The admin API, the hosts' websocket and the replicas' internal
route never answer a browser from another origin.
"""

from __future__ import annotations

from aiohttp import web

from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.json import Handler
from andy_host.protocol import HOSTS_WS_PATH

METHODS = "GET, POST, OPTIONS"
EXPOSED = "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
CLOSED_PATHS = ("/api/andy/admin", HOSTS_WS_PATH, "/api/andy/internal/")  # not for browsers


def allowed_origin(request: web.Request) -> str | None:
    """The value of Access-Control-Allow-Origin for this request, or None (no CORS)."""
    origins = request.app[CONFIG].cors_origins
    origin = request.headers.get("Origin")
    if not origins or not origin or request.path.startswith(CLOSED_PATHS):
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        origin = allowed_origin(request)
        if origin is None:
            return web.Response(status=403, text="CORS: this origin may not call this pool\n")
        asked = request.headers.get("Access-Control-Request-Headers", "authorization, content-type")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": METHODS,
            "Access-Control-Allow-Headers": asked[:1024],
            "Access-Control-Max-Age": str(request.app[CONFIG].cors_max_age), "Vary": "Origin",
        })
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: allow the answer to be read by an allowed origin."""
    origin = allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED
        response.headers["Vary"] = "Origin"
