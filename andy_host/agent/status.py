"""The daemon's local-only status endpoint (a unix socket in the state directory),
read by ``andy-host status``, and what that command shows.

A daemon that is connected but shares no model (the owner's ``share_models`` /
``deny_models`` withhold them all, or the backend serves none) shows ``idle`` with the
reason, never ``active``: it will get no jobs. The coordinator shows such a host as
``idle`` too (``Host.shown_status``).
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

from andy_host.agent.identity import state_dir
from andy_host.config import AgentConfig

StatusFn = Callable[[], dict[str, Any]]


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
    """Each daemon's status with ``running: true``, or ``running: false`` and why."""
    return asyncio.run(_query(daemon_sockets(agent, explicit)))


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
