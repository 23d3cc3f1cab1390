"""The internal endpoint where another replica asks this one to run a job on its hosts.

Only replicas that know ``replica_secret`` may call it (401 otherwise, compared in
constant time; 404 when this coordinator is not replicated). The job is checked as a
client's request would be, then run by this replica's relay on its own hosts (never
forwarded again), and its items stream back as NDJSON (``replica_wire``). The job's
deadline is the asking replica's: the budget it sent, from when the job arrived, handed
to the relay (which starts no ``request_timeout`` of its own). When the asking replica
goes away, the handler is cancelled and the job with it, on the host too; when it stops
reading, its connection is closed.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import structlog
from aiohttp import web

from andy_host.coordinator.pool.relay import RELAY
from andy_host.coordinator.replication.federation import FEDERATION
from andy_host.coordinator.replication.wire import (
    INTERNAL_JOBS_PATH,
    REPLICA_HEADER,
    failure_line,
    item_line,
    read_job,
    split_chunk,
)
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.errors import APIError, ProtocolError, timeout_error
from andy_host.protocol import Chunk

log = structlog.get_logger("andy_host.replica_api")


async def internal_job(request: web.Request) -> web.StreamResponse:
    federation = request.app.get(FEDERATION)
    if federation is None:
        raise web.HTTPNotFound()
    if not federation.authentic(request.headers.get("Authorization", "")):
        log.warning("replica.unauthenticated", remote=request.remote)
        return web.json_response({"error": "not a replica of this pool"}, status=401)
    try:
        job = read_job(await request.read())
    except ProtocolError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    deadline = asyncio.get_running_loop().time() + job.budget  # the asker's, not a request_timeout of ours
    asker = request.headers.get(REPLICA_HEADER, "")[:64]
    federation.counts["served_for_peers"] += 1
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    def stalled() -> None:
        log.warning("replica.not_reading", replica=asker, request_id=job.trace)
        if request.transport is not None:
            request.transport.close()

    max_chars = request.app[CONFIG].max_frame_bytes // 8  # UTF-8 and JSON escapes: at most 6 bytes a char
    items = request.app[RELAY].run(job.work, job.client, job.stream, stalled, job.trusted_only, job.trace, deadline)
    try:
        async with asyncio.timeout_at(deadline), aclosing(items):  # the same deadline (a write that hangs)
            async for item in items:
                for part in split_chunk(item, max_chars) if isinstance(item, Chunk) else (item,):
                    await response.write(item_line(part))
    except APIError as error:
        await response.write(failure_line(error))
    except TimeoutError:
        await response.write(failure_line(timeout_error(f"the request did not complete within {job.budget:.0f}s")))
    await response.write_eof()
    return response


def add_replica_routes(app: web.Application) -> None:
    app.router.add_post(INTERNAL_JOBS_PATH, internal_job)
