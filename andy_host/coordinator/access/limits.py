"""Admission on the request path: the ``limited`` wrapper every rate-limited endpoint
wears (401/429 before the handler, a refund when the pool failed the request, the
request's metrics after it), and the rate-limit headers on its answers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from andy_host.coordinator.runtime.state import ACCESS, METRICS
from andy_host.errors import APIError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PERMIT_HEADERS = web.RequestKey("ratelimit_headers", dict[str, str])
POOL_FAILED = web.RequestKey("pool_failed", bool)  # a stream ended with an error event the pool caused
MODEL = web.RequestKey("model", str)  # the resolved model, for metrics


def limited(endpoint: str) -> Callable[[Handler], Handler]:
    """Admit (401/429) before the handler runs; refund when the pool failed the request."""

    def wrap(handler: Handler) -> Handler:
        async def limited_handler(request: web.Request) -> web.StreamResponse:
            access, metrics = request.app[ACCESS], request.app[METRICS]
            started = time.monotonic()
            status = 500
            try:
                permit = await access.admit(request, endpoint)
                request[PERMIT_HEADERS] = permit.headers
                try:
                    response = await handler(request)
                except APIError as exc:
                    if exc.status >= 500:
                        await access.refund(permit)
                    exc.headers = {**permit.headers, **exc.headers}
                    raise
                status = response.status
                if status >= 500 or request.get(POOL_FAILED):
                    await access.refund(permit)
                    status = 502 if status < 500 else status  # a stream that ended in an error event
                return response
            except APIError as exc:
                status = exc.status
                raise
            finally:
                metrics.observe(endpoint, request.get(MODEL, ""), status, time.monotonic() - started)

        return limited_handler

    return wrap


async def add_permit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: rate-limit headers on every answer of a limited endpoint."""
    for name, value in request.get(PERMIT_HEADERS, {}).items():
        response.headers.setdefault(name, value)
