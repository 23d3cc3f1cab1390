"""``andy-host service``: run andy-host as a systemd service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from andy_host.cli.common import app
from andy_host.errors import InstallError

service_app = typer.Typer(no_args_is_help=True, help="Run andy-host as a systemd service.")
app.add_typer(service_app, name="service")


@service_app.command("install")
def service_install(
    role: Annotated[str, typer.Option(help="host (join a pool) or coordinator.")] = "host",
    coordinator: Annotated[str | None, typer.Option(help="Coordinator URL (host role).")] = None,
    backend: Annotated[str, typer.Option(help="ollama or llamacpp (host role).")] = "ollama",
    backend_url: Annotated[str | None, typer.Option(help="The local inference server's URL.")] = None,
    name: Annotated[str | None, typer.Option(help="Name shown in the pool.")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Most jobs at once.")] = None,
    token: Annotated[str | None, typer.Option(help="Host token.")] = None,
    managed: Annotated[bool, typer.Option("--managed/--no-managed", help="Run llama-server itself.")] = False,
    model: Annotated[
        str | None, typer.Option(help="GGUF path, or 'smollm2-135m' / 'gemma3-270m' (managed).")
    ] = None,
    llama_server: Annotated[str | None, typer.Option(help="llama-server binary.")] = None,
    host: Annotated[str, typer.Option(help="Listen address (coordinator role).")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Listen port (coordinator role).")] = 8080,
    root: Annotated[Path, typer.Option(help="Install under this root (files only; commands printed).")] = Path("/"),
    prefix: Annotated[str, typer.Option(help="Where the virtualenv with andy-host lives.")] = "/opt/andy-host",
    user: Annotated[str, typer.Option(help="The service's system user.")] = "andy-host",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print every file and command; change nothing.")] = False,
) -> None:
    """Write the config and the unit, create the user, enable and start the service."""
    import os

    from andy_host.service import check_backend, execute, plan_install

    if role not in ("host", "coordinator"):
        typer.echo("andy-host: --role must be host or coordinator", err=True)
        raise typer.Exit(2)
    if not dry_run and root == Path("/") and os.geteuid() != 0:
        typer.echo("andy-host: service install must run as root (sudo andy-host service install ...), "
                   "or pass --dry-run to see what it would do", err=True)
        raise typer.Exit(1)
    settings: dict[str, dict[str, object]]
    if role == "host":
        if not coordinator:
            typer.echo("andy-host: --coordinator URL is required for a host", err=True)
            raise typer.Exit(2)
        try:
            check_backend(backend, managed, llama_server)
        except InstallError as exc:
            typer.echo(f"andy-host: {exc}", err=True)
            raise typer.Exit(1) from None
        settings = {
            "agent": {"coordinator": coordinator, "name": name, "max_concurrency": max_concurrency, "token": token},
            "backend": {"kind": backend, "url": backend_url, "managed": managed or None, "model": model,
                        "llama_server": llama_server},
            "log": {"format": "json"},
        }
    else:
        settings = {"coordinator": {"host": host, "port": port, "db": "/var/lib/andy-host/pool.db"},
                    "log": {"format": "json"}}
    plan = plan_install(role, settings, root, prefix, user)
    try:
        execute(plan, root, dry_run, typer.echo)
    except InstallError as exc:
        typer.echo(f"andy-host: {exc}", err=True)
        raise typer.Exit(1) from None

