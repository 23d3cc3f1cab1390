"""The daemon's local-only status endpoint (a unix socket in the state directory),
read by ``andy-host status``, and what that command shows.

A daemon that is connected but shares no model (the owner's ``share_models`` /
``deny_models`` withhold them all, or the backend serves none) shows ``idle`` with the
reason, never ``active``: it will get no jobs. The coordinator shows such a host as
``idle`` too (``Host.shown_status``).

``andy-host status`` also asks the coordinator the daemon is connected to for the
host's credit (``GET /api/andy/hosts/{host_id}/credit``, the coordinator's
hosts/credit.py): the jobs and tokens it holds until an answer check passes, has
credited, and voided. It proves the host id with what the daemon presents in its
hello: the configured host token (``agent.token``) or the host secret the coordinator
issued, kept in the state directory; the daemon's socket never gives them out. It
waits ``agent.connect_timeout`` at most; without an answer the status says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from andy_host.agent.identity import host_secret, state_dir
from andy_host.agent.link import ws_url
from andy_host.agent.tls import client_context
from andy_host.config import AgentConfig
from andy_host.protocol import HOSTS_WS_PATH

StatusFn = Callable[[], dict[str, Any]]
CREDIT_PATH = "/api/andy/hosts/{host_id}/credit"  # the coordinator's hosts/credit.py


def socket_path(directory: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "host"
    return directory / f"status-{safe}.sock"


@contextlib.asynccontextmanager
async def status_server(path: Path, status: StatusFn) -> AsyncIterator[None]:
    """Serve GET /status on the unix socket ``path`` while the block runs."""

    async def handle(_: web.Request) -> web.Response:
        return web.json_response(status())

    app = web.Application()
    app.router.add_get("/status", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        os.makedirs(path.parent, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from a killed daemon
        site = web.UnixSite(runner, str(path))
        await site.start()
        os.chmod(path, 0o600)
    except OSError:
        await runner.cleanup()
        yield  # no status endpoint (read-only state dir); the daemon still runs
        return
    try:
        yield
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def shown_status(status: str, reason: str | None, models: list[str], withheld: list[str],
                 reachable: bool) -> tuple[str, str | None]:
    """The status a person should believe: ``idle`` when nothing is shared."""
    if status != "active" or not reachable or models:
        return status, reason
    why = (f"{len(withheld)} withheld by share_models/deny_models ({', '.join(withheld[:5])})" if withheld
           else "the backend serves none")
    return "idle", f"no models shared: {why}"


def daemon_sockets(agent: AgentConfig, explicit: bool) -> list[Path]:
    """The sockets to ask: the named daemon's, or every one in the state directory."""
    directory = state_dir(agent.state_dir)
    mine = socket_path(directory, agent.effective_name())
    if explicit:
        return [mine]
    return sorted(directory.glob("status-*.sock")) or [mine]


def query_daemons(agent: AgentConfig, explicit: bool) -> list[dict[str, Any]]:
    """Each daemon's status with ``running: true``, or ``running: false`` and why; a
    running one's with its ``credit`` from the coordinator (see :func:`read_credit`)."""
    return asyncio.run(query_all(agent, explicit))


async def query_all(agent: AgentConfig, explicit: bool) -> list[dict[str, Any]]:
    found = await _query(daemon_sockets(agent, explicit))
    running = [s for s in found if s["running"]]
    credits = await asyncio.gather(*(read_credit(agent, s) for s in running))
    for status, credit in zip(running, credits, strict=True):
        status["credit"] = credit
    return found


def credit_url(coordinator: str, host_id: str) -> str:
    """``http://pool:8080`` (or its ws:// form) -> its credit URL for ``host_id``."""
    url = ws_url(coordinator)
    base = url.removesuffix(HOSTS_WS_PATH)
    scheme, rest = base.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest}{CREDIT_PATH.format(host_id=host_id)}"


def credentials(agent: AgentConfig, name: str) -> list[str]:
    """What may prove this host's id, as its hello would: the token, the issued secret."""
    secret = host_secret(state_dir(agent.state_dir), name)
    return [c for c in (agent.token, secret) if c]


async def read_credit(agent: AgentConfig, status: dict[str, Any]) -> dict[str, Any]:
    """The host's held, credited and voided jobs and tokens as its coordinator says, or
    ``{"error": why}``."""
    host_id, coordinator = status.get("host_id"), status.get("coordinator")
    if not isinstance(host_id, str) or not isinstance(coordinator, str):
        return {"error": "the daemon did not say its host id and coordinator"}
    proofs = credentials(agent, str(status.get("name") or agent.effective_name()))
    if not proofs:
        return {"error": "no host token or host secret here to ask the coordinator with"}
    try:
        url = credit_url(coordinator, host_id)
    except ValueError as exc:
        return {"error": str(exc)}
    timeout = aiohttp.ClientTimeout(total=agent.connect_timeout)
    refused = "the coordinator did not accept this host's token or secret"
    try:
        connector = aiohttp.TCPConnector(ssl=client_context(agent.ca_file)) if url.startswith("https:") else None
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for proof in proofs:
                async with session.get(url, headers={"Authorization": f"Bearer {proof}"}) as resp:
                    if resp.status == 401:
                        continue  # the other credential may be the one bound to the id
                    body = await resp.json(content_type=None)
                    if resp.status != 200:
                        error = body.get("error") if isinstance(body, dict) else None
                        message = error.get("message") if isinstance(error, dict) else error
                        return {"error": f"the coordinator answered {resp.status}: {message or resp.reason}"}
                    if not isinstance(body, dict):
                        return {"error": "the coordinator's answer is not an object"}
                    return {k: body.get(k) for k in ("held", "credited", "voided", "connected", "quarantined")}
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        return {"error": f"cannot reach the coordinator ({type(exc).__name__})"}
    return {"error": refused}


async def _query(paths: list[Path]) -> list[dict[str, Any]]:
    async def one(path: Path) -> dict[str, Any]:
        try:
            return {"running": True, **await read_status(path)}
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            name = path.name.removeprefix("status-").removesuffix(".sock")
            return {"running": False, "name": name, "socket": str(path),
                    "error": f"no daemon answers ({type(exc).__name__})"}

    return list(await asyncio.gather(*(one(p) for p in paths)))


def render_absent(status: dict[str, Any]) -> str:
    return (f"andy-host is not running: no daemon answers at {status.get('socket')}.\n"
            "Start it with `andy-host join --coordinator URL ...` or `systemctl start andy-host`.")


async def read_status(path: Path, limit: float = 3.0) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=limit)) as session:
        async with session.get("http://daemon/status") as resp:
            data: dict[str, Any] = await resp.json()
            return data


def render(status: dict[str, Any]) -> str:
    lines = [f"andy-host {status.get('name')} (host id {status.get('host_id')}, pid {status.get('pid')})"]
    if status.get("connected"):
        lines.append(f"  connected to {status.get('coordinator')}")
    else:
        lines.append(f"  NOT connected to {status.get('coordinator')}: {status.get('last_error') or 'connecting'}")
    lines.append(f"  status: {status.get('status')}" + (f" ({status['reason']})" if status.get("reason") else ""))
    backend = status.get("backend", {})
    reach = "reachable" if backend.get("reachable") else f"NOT reachable: {backend.get('error')}"
    lines.append(f"  backend: {backend.get('kind')} at {backend.get('url')}, {reach}")
    lines.append(f"  models shared: {', '.join(backend.get('models', [])) or 'none'}")
    lines.append(f"  jobs: {status.get('jobs_in_flight')} in flight, {status.get('served')} served, "
                 f"{status.get('tokens')} tokens contributed")
    if "credit" in status:
        lines.append(f"  credit: {credit_words(status['credit'])}")
    for gpu in status.get("hardware", {}).get("gpus", []):
        if gpu.get("error"):
            lines.append(f"  GPU {gpu.get('index')}: {gpu.get('name')}: ERROR {gpu['error']}")
        else:
            used, total = (gpu.get("memory_used") or 0) / 2**30, (gpu.get("memory_total") or 0) / 2**30
            lines.append(f"  GPU {gpu.get('index')}: {gpu.get('name')}, {used:.1f}/{total:.1f} GiB, "
                         f"{gpu.get('utilization_gpu')}% busy, {gpu.get('temperature')}°C")
    for reason in status.get("pause_reasons", []):
        lines.append(f"  paused: {reason}")
    lines.append(f"  up {time.strftime('%H:%M:%S', time.gmtime(status.get('uptime', 0)))}")
    return "\n".join(lines)


def credit_words(credit: dict[str, Any]) -> str:
    """``3 jobs (120 tokens) held until checked, 40 jobs (9000 tokens) credited, none voided``."""
    if credit.get("error"):
        return f"unknown: {credit['error']}"

    def amount(key: str) -> str:
        part = credit.get(key)
        jobs, tokens = (part.get("jobs") or 0, part.get("tokens") or 0) if isinstance(part, dict) else (0, 0)
        return f"{jobs} job{'s' if jobs != 1 else ''} ({tokens} tokens)" if jobs or tokens else "none"

    voided = amount("voided")
    return (f"{amount('held')} held until checked, {amount('credited')} credited"
            + (f", {voided} voided by a failed check or quarantine" if voided != "none" else ", none voided"))
