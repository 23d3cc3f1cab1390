"""What the coordinator knows about one client request, as one typed value.

The request-id middleware makes it; access fills in who the request is from and what
its key allows; the API adds the model it resolved and whether the pool failed the
request; limits and metrics read it. Nothing else travels between modules on the
request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


@dataclass(slots=True)
class RequestContext:
    request_id: str = ""
    client: str = ""  # who the request is from, for fair queueing: "key:<id>" or "ip:<address>"
    trusted_only: bool = False  # the key keeps its requests on trusted hosts
    key_scope: tuple[str, ...] = ()  # the key's model patterns; (): every model
    keyless: bool = False  # no key, where keys are required: public answers only
    model: str = ""  # the resolved model, for metrics
    pool_failed: bool = False  # a stream ended with an error event the pool caused
    permit_headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers for the answer


CONTEXT = web.RequestKey("context", RequestContext)


def context(request: web.Request) -> RequestContext:
    """The request's context, made on first use (a handler called without the middleware)."""
    found = request.get(CONTEXT)
    if found is None:
        request[CONTEXT] = found = RequestContext()
    return found
