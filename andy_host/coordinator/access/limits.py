"""Admission on the request path: the ``limited`` wrapper every rate-limited endpoint
wears (401/429 before the handler, a refund when the pool failed the request, the
request's metrics after it), and the rate-limit headers on its answers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from andy_host.coordinator.access.auth import ACCESS
from andy_host.coordinator.observe.metrics import METRICS
from andy_host.coordinator.web.context import CONTEXT, context
from andy_host.errors import APIError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def limited(endpoint: str) -> Callable[[Handler], Handler]:
    """Admit (401/429) before the handler runs; refund when the pool failed the request."""

    def wrap(handler: Handler) -> Handler:
        async def limited_handler(request: web.Request) -> web.StreamResponse:
            access, metrics, ctx = request.app[ACCESS], request.app[METRICS], context(request)
            started = time.monotonic()
            status = 500
            try:
                permit = await access.admit(request, endpoint)
                ctx.permit_headers = permit.headers
                try:
                    response = await handler(request)
                except APIError as exc:
                    if exc.status >= 500:
                        await access.refund(permit)
                    exc.headers = {**permit.headers, **exc.headers}
                    raise
                status = response.status
                if status >= 500 or ctx.pool_failed:
                    await access.refund(permit)
                    status = 502 if status < 500 else status  # a stream that ended in an error event
                return response
            except APIError as exc:
                status = exc.status
                raise
            finally:
                metrics.observe(endpoint, ctx.model, status, time.monotonic() - started)

        return limited_handler

    return wrap


async def add_permit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: rate-limit headers on every answer of a limited endpoint."""
    found = request.get(CONTEXT)
    for name, value in (found.permit_headers if found is not None else {}).items():
        response.headers.setdefault(name, value)
