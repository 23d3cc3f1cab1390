"""``andy-host coordinator hosts``: the ledger, each host's standing; release, ban or kick one.

These write the database; every running coordinator applies the action within
``flush_interval`` (the admin HTTP API applies it at once). An unknown host is a
one-line error with exit code 2."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from andy_host.cli.common import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    _fail,
    _print_json,
    _table,
    _when,
    _with_store,
    coordinator_app,
)
from andy_host.coordinator.admin.moderation import MAX_KICK_SECONDS
from andy_host.coordinator.store.interface import Store

hosts_app = typer.Typer(help="Hosts: the ledger and each host's standing; release, ban or kick one.")
coordinator_app.add_typer(hosts_app, name="hosts")


@hosts_app.callback(invoke_without_command=True)
def coordinator_hosts(ctx: typer.Context, config: ConfigOpt = None, db: DbOpt = None,
                      as_json: JsonOpt = False) -> None:
    """The contribution ledger with each host's standing: requests, measured tokens,
    failures, time connected, checks passed and failed, strikes, quarantine or ban."""
    if ctx.invoked_subcommand is not None:
        return
    async def read(store: Store) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        return await store.standings(), await store.ledger()

    standings, rows = _with_store(config, db, read)
    if as_json:
        _print_json([{**row, **standings.get(row["host_id"], {})} for row in rows])
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
    _table(rows, ["host_id", "name", "host_token", "requests", "tokens", "failures", "hours", "last_seen",
                  "checks", "strikes", "standing"])


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

