"""Request ids: every request gets one, every answer says it (``X-Request-Id``).

A client's own ``X-Request-Id`` (up to 64 characters of letters, digits and ``._:-``)
is kept; otherwise the coordinator makes one. The id is bound to every log line of
the request on the coordinator and travels to the host with the job (``trace``), so
the host's log lines for it carry the same id. It is the only thing of the client's
that reaches a host: put nothing secret in it.
"""

from __future__ import annotations

import re
import secrets

import structlog
from aiohttp import web

from andy_host.coordinator.web.context import CONTEXT, context
from andy_host.coordinator.web.json import Handler
from andy_host.protocol import HOSTS_WS_PATH

HEADER = "X-Request-Id"
VALID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_id() -> str:
    return f"req_{secrets.token_hex(12)}"


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(HEADER, "")
    context(request).request_id = request_id = given if VALID.match(given) else new_id()
    if request.path == HOSTS_WS_PATH:  # a host's session, not a request: its lines carry host_id
        return await handler(request)
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        return await handler(request)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the id on every answer, errors and streams included."""
    found = request.get(CONTEXT)
    request_id = found.request_id if found is not None else ""
    if request_id:
        response.headers[HEADER] = request_id
