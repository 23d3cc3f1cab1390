"""``andy-host coordinator hosts``: the ledger, each host's standing; release, ban or kick one.

These write the database; every running coordinator applies the action within
``flush_interval`` (the admin HTTP API applies it at once). An unknown host is a
one-line error with exit code 2.

The listing reads the database; each host's escrow (jobs and tokens held until an
answer check passes, credited, voided: trust/escrow.py) lives in the running
coordinator's memory, so with an admin token (``--admin-token``, the environment or the
config) it is read from the coordinator's admin API (``GET /api/andy/admin/hosts``,
``--url``) too. Without one, or when the coordinator does not answer (said once on
stderr), those columns show ``-``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from andy_host.cli.common import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    _fail,
    _load,
    _print_json,
    _table,
    _when,
    _with_store,
    coordinator_app,
)
from andy_host.cli.live import _default_url
from andy_host.coordinator.admin.listing import ESCROW_COLUMNS, escrow_cells
from andy_host.coordinator.admin.moderation import MAX_KICK_SECONDS
from andy_host.coordinator.store.interface import Store

hosts_app = typer.Typer(help="Hosts: the ledger and each host's standing; release, ban or kick one.")
coordinator_app.add_typer(hosts_app, name="hosts")


HOSTS_PATH = "/api/andy/admin/hosts"


def live_escrows(url: str, token: str, timeout: float) -> dict[str, dict[str, Any] | None]:
    """Each host's escrow as the running coordinator at ``url`` holds it, by host id;
    raises OSError or ValueError when it cannot be read."""
    request = urllib.request.Request(url.rstrip("/") + HOSTS_PATH, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise OSError(f"it answered {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    return {h["host_id"]: h.get("escrow") for h in body["hosts"]}


@hosts_app.callback(invoke_without_command=True)
def coordinator_hosts(
    ctx: typer.Context, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False,
    url: Annotated[str | None, typer.Option(
        help="The running coordinator to read each host's escrow from (default: "
             "http://<coordinator.host>:<coordinator.port> of the config).")] = None,
    admin_token: Annotated[str | None, typer.Option(
        help="Its admin_token (or ANDY_HOST_COORDINATOR_ADMIN_TOKEN, or the config's); without one the "
             "escrow columns show -.")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the coordinator.")] = 5.0,
) -> None:
    """The contribution ledger with each host's standing: requests, measured tokens,
    failures, time connected, checks passed and failed, strikes, quarantine or ban; and,
    from the running coordinator, jobs/tokens held until an answer check passes,
    credited and voided (a stranger's credit waits for its checks)."""
    if ctx.invoked_subcommand is not None:
        return
    async def read(store: Store) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        return await store.standings(), await store.ledger()

    standings, rows = _with_store(config, db, read)
    loaded = _load(config, {"coordinator": {"admin_token": admin_token}}).coordinator
    escrows: dict[str, dict[str, Any] | None] = {}
    if loaded.admin_token:
        base = url or _default_url(loaded.host, loaded.port)
        try:
            escrows = live_escrows(base, loaded.admin_token, timeout)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            typer.echo(f"andy-host: no escrow figures: cannot read {base}{HOSTS_PATH} ({exc})", err=True)
    if as_json:
        _print_json([{**row, **standings.get(row["host_id"], {}), "escrow": escrows.get(row["host_id"])}
                     for row in rows])
        return
    for row in rows:
        standing = standings.get(row["host_id"], {})
        row["hours"] = f"{row['connected_seconds'] / 3600:.2f}"
        row["last_seen"] = _when(row["last_seen"])
        row["host_token"] = row["host_token"] or "-"
        row["checks"] = f"{standing.get('checks_passed', 0)}/{standing.get('checks_failed', 0)}"
        row["strikes"] = standing.get("strikes", 0)
        row["standing"] = (f"banned: {standing['banned']}" if standing.get("banned")
                           else f"quarantined: {standing['quarantined']}" if standing.get("quarantined")
                           else "trusted" if standing.get("trusted") else "ok")
        row.update(escrow_cells(escrows.get(row["host_id"])))
    _table(rows, ["host_id", "name", "host_token", "requests", "tokens", "failures", "hours", "last_seen",
                  "checks", "strikes", *ESCROW_COLUMNS, "standing"])


@hosts_app.command("release")
def hosts_release(host_id: Annotated[str, typer.Argument(help="The host's id (as listed).")],
                  config: ConfigOpt = None, db: DbOpt = None) -> None:
    """End a host's quarantine; a running coordinator applies it within a second."""
    if not _with_store(config, db, lambda store: store.release_host(host_id)):
        _fail(f"no host {host_id!r} (coordinator hosts lists them)")
    typer.echo(f"released {host_id}")


@hosts_app.command("ban")
def hosts_ban(
    host_id: Annotated[str, typer.Argument(help="The host's id (as listed).")],
    reason: Annotated[str, typer.Option(help="Why (kept in the store, shown to the admin).")] = "banned by the admin",
    config: ConfigOpt = None, db: DbOpt = None,
) -> None:
    """Ban a host: its token (every host on it) or, for an open-enrolment host, its own id
    and secret. It survives reconnects; running coordinators disconnect it within a second."""
    banned = _with_store(config, db, lambda store: store.ban_host(host_id, reason))
    if banned is None:
        _fail(f"no host {host_id!r} (coordinator hosts lists them)")
    typer.echo(f"banned {banned}")


@hosts_app.command("kick")
def hosts_kick(
    host_id: Annotated[str, typer.Argument(help="The host's id (as listed).")],
    seconds: Annotated[float | None, typer.Option(
        min=1, max=MAX_KICK_SECONDS,
        help="How long its credential is refused, at most a year (default: coordinator.kick_seconds).")] = None,
    config: ConfigOpt = None, db: DbOpt = None,
) -> None:
    """Disconnect a host and refuse it for a while (a token host: that host id; an
    open-enrolment host: its id and secret); then it may come back. Running
    coordinators apply it within a second."""
    async def kick(store: Store) -> bool:
        if await store.host_credential(host_id) is None:
            return False
        await store.add_event("kick", host_id, None if seconds is None else str(float(seconds)))
        return True

    if not _with_store(config, db, kick):
        _fail(f"no host {host_id!r} (coordinator hosts lists them)")
    typer.echo(f"kicked {host_id}")

