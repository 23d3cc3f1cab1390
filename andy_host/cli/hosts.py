"""``andy-host coordinator hosts``: the ledger, each host's standing, release and ban."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from andy_host.cli.common import ConfigOpt, DbOpt, _table, _when, _with_store, coordinator_app
from andy_host.coordinator.store import Store

hosts_app = typer.Typer(help="Hosts: the ledger and each host's standing; release or ban one.")
coordinator_app.add_typer(hosts_app, name="hosts")


@hosts_app.callback(invoke_without_command=True)
def coordinator_hosts(ctx: typer.Context, config: ConfigOpt = None, db: DbOpt = None) -> None:
    """The contribution ledger with each host's standing: requests, measured tokens,
    failures, time connected, checks passed and failed, strikes, quarantine or ban."""
    if ctx.invoked_subcommand is not None:
        return
    async def read(store: Store) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        return await store.standings(), await store.ledger()

    standings, rows = _with_store(config, db, read)
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
        typer.echo(f"andy-host: no host {host_id!r}", err=True)
        raise typer.Exit(1)
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
        typer.echo(f"andy-host: no host {host_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"banned {banned}")

