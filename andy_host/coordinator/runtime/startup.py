"""What ``coordinator serve`` tells its operator at start: where everything is, and what
it cannot do. Plain functions of the config and the bound URL; no I/O.

- :func:`facts`: the URLs of the OpenAI API, the dashboard and ``/metrics``, whether the
  admin API is on, the enrolment mode, the database (and whether it lives in memory);
- :func:`render`: those facts as the lines printed at start-up;
- :func:`listen_problem`: why the listening socket could not be opened, in one line that
  names the fix (a port in use, a port that needs root, an address not of this machine).
"""

from __future__ import annotations

import errno
import socket
from typing import Any
from urllib.parse import urlsplit

from andy_host import __version__
from andy_host.config import CoordinatorConfig

API_PREFIX = "/api/andy/v1"
ADMIN_PREFIX = "/api/andy/admin"
WILDCARDS = ("0.0.0.0", "::", "")


def _database(config: CoordinatorConfig) -> tuple[str, bool]:
    """What holds keys, tokens and the ledger, and whether it is lost at exit."""
    if config.database_url:
        where = urlsplit(config.database_url)
        return f"PostgreSQL at {where.hostname or 'localhost'}{where.path or ''}", False
    if config.db and config.db != ":memory:":
        return f"SQLite {config.db}", False
    return "in memory", True


def facts(config: CoordinatorConfig, url: str) -> dict[str, Any]:
    """The start-up facts, as one structured log event carries them."""
    database, in_memory = _database(config)
    return {
        "version": __version__,
        "url": url,
        "all_addresses": config.host in WILDCARDS,
        "api": url + API_PREFIX,
        "dashboard": url + "/",
        "metrics": None if config.metrics_access == "off" else url + "/metrics",
        "metrics_access": config.metrics_access,
        "admin_api": bool(config.admin_token),
        "enrolment": config.enrolment,
        "database": database,
        "database_in_memory": in_memory,
        "replicated": _replicated(config),
    }


def _replicated(config: CoordinatorConfig) -> str | None:
    """Where replicas share limits and hosts (no password shown), or None in one process."""
    if not config.redis_url:
        return None
    where = urlsplit(config.redis_url)
    replica = config.replica_id or "a generated id"
    return f"Redis at {where.hostname or 'localhost'}:{where.port or 6379}{where.path or ''}, as replica {replica}"


def render(f: dict[str, Any]) -> str:
    """The facts as the lines ``coordinator serve`` prints."""
    url = f["url"]
    where, join_url = f"listening on {url}", url
    if f["all_addresses"]:
        port = urlsplit(url).port
        join_url = f"http://{socket.gethostname()}:{port}"
        where += f" (every address of this machine: e.g. {join_url})"
    metrics = "off (coordinator.metrics_access = off)" if f["metrics"] is None else (
        f["metrics"] + ("" if f["metrics_access"] == "public" else "  (admin token required)"))
    admin = (f"on at {url}{ADMIN_PREFIX}/ (Authorization: Bearer <coordinator.admin_token>)" if f["admin_api"]
             else "off (set coordinator.admin_token to turn it on)")
    enrolment = ("open: any host may join" if f["enrolment"] == "open"
                 else "token: hosts need a token (andy-host coordinator tokens create)")
    lines = [
        f"andy-host coordinator {f['version']} {where}",
        f"  OpenAI API   {f['api']}   (base_url for the OpenAI SDKs; the Ollama API is at {url}/api)",
        f"  dashboard    {f['dashboard']}",
        f"  metrics      {metrics}",
        f"  admin API    {admin}",
        f"  enrolment    {enrolment}; hosts join with: andy-host join --coordinator {join_url}",
        f"  database     {f['database']}",
    ]
    if f.get("replicated"):
        lines.append(f"  replicated   {f['replicated']} (docs/scale.md)")
    if f["database_in_memory"]:
        lines.append("  WARNING: the database is in memory: API keys, host tokens and the ledger are lost when "
                     "the coordinator stops. Keep them with --db FILE (coordinator.db).")
    return "\n".join(lines)


def listen_problem(host: str, port: int, exc: OSError) -> str:
    """One line saying why ``host:port`` could not be listened on, and what to do."""
    shown = f"{host or '*'}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {shown}: the port is already in use (another coordinator, or another "
                f"program; `ss -ltnp 'sport = :{port}'` shows which). Stop it, or choose another port "
                "with --port (coordinator.port).")
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {shown}: permission denied (ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE). Choose a port such as 8080 with --port (coordinator.port).")
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return (f"cannot listen on {shown}: {host!r} is not an address of this machine. Use --host 0.0.0.0 "
                "(every address) or 127.0.0.1 (this machine only).")
    return f"cannot listen on {shown}: {exc.strerror or exc}"
