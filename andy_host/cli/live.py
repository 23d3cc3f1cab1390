"""``andy-host coordinator status``: the live totals of a running coordinator, read from
its admin HTTP API (``GET /api/andy/admin/status``) with the admin token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from andy_host.cli.common import ConfigOpt, JsonOpt, _fail, _load, _print_json, _table, coordinator_app

STATUS_PATH = "/api/andy/admin/status"


def _default_url(host: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def fetch_status(url: str, token: str, timeout: float) -> dict[str, Any]:
    """The coordinator's status document; a one-line error (exit 1) when it cannot be read."""
    request = urllib.request.Request(url.rstrip("/") + STATUS_PATH, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        _fail(f"{url} answered {exc.code}: {message}", 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        _fail(f"cannot read the status of {url}: {reason} (is the coordinator running? check --url)", 1)


def _print(status: dict[str, Any], url: str) -> None:
    totals, rates = status["totals"], status["rates"]
    hosts = ", ".join(f"{n} {s}" for s, n in status["hosts"].items() if n) or "none"
    typer.echo(f"coordinator {url} (andy-host {status['version']}, enrolment {status['enrolment']})")
    replicas = totals.get("replicas", 1)
    # replicated: the totals are the pool's, the rest is the replica that answered (a load
    # balancer picks one), so say so rather than "2 connected (none)"
    here = " on this replica" if replicas > 1 else ""
    pool = f" in the pool of {replicas} replicas" if replicas > 1 else ""
    typer.echo(f"hosts: {totals['hosts']} connected{pool} ({hosts}{here}); {totals['serving_hosts']} serving, "
               f"{totals['capacity']} slots")
    typer.echo(f"jobs: {totals['in_flight']} in flight, {totals['queued']} queued")
    typer.echo(f"last {rates['window_seconds']:.0f}s{here}: {rates['requests_per_s']:.2f} requests/s, "
               f"{rates['tokens_per_s']:.1f} tokens/s, {rates['errors_per_s']:.2f} failed/s")
    if status["models"]:
        typer.echo(f"\nmodels{here}:" if here else "")
        _table(status["models"], ["name", "hosts", "serving_hosts", "capacity", "queue"])
    else:
        typer.echo(f"models: none served{here or ' now'}")


@coordinator_app.command("status")
def coordinator_status(
    url: Annotated[str | None, typer.Option(
        help="The coordinator's base URL (default: http://<coordinator.host>:<coordinator.port> of the config).")]
    = None,
    admin_token: Annotated[str | None, typer.Option(
        help="The coordinator's admin_token (or ANDY_HOST_COORDINATOR_ADMIN_TOKEN, or the config's).")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the answer.")] = 10.0,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Live totals of a running coordinator: hosts by status, models with capacity,
    queue, requests and tokens per second over the last minute."""
    loaded = _load(config, {"coordinator": {"admin_token": admin_token}}).coordinator
    base = url or _default_url(loaded.host, loaded.port)
    if not loaded.admin_token:
        _fail("no admin token: pass --admin-token, set ANDY_HOST_COORDINATOR_ADMIN_TOKEN or coordinator.admin_token")
    status = fetch_status(base, loaded.admin_token, timeout)
    if as_json:
        _print_json(status)
    else:
        _print(status, base)
