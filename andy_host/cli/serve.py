"""``andy-host --version``, ``andy-host version`` and ``andy-host coordinator serve``."""

from __future__ import annotations

from typing import Annotated

import typer

from andy_host import __version__
from andy_host.cli.common import ConfigOpt, LogFormatOpt, _load, _sections, app, coordinator_app
from andy_host.errors import ListenError

# Where each serve flag goes in the config: section -> {config option: flag name}.
SERVE_FLAGS = {
    "coordinator": {"host": "host", "port": "port", "db": "db", "database_url": "database_url",
                    "redis_url": "redis_url"},
    "log": {"format": "log_format"},
}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"andy-host {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """A distributed AI compute pool: `join` shares a GPU, `coordinator serve` runs a pool."""


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@coordinator_app.command("serve")
def coordinator_serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (0.0.0.0: every address).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (0 picks a free one).")] = None,
    config: ConfigOpt = None,
    db: Annotated[
        str | None, typer.Option(help="SQLite database file for keys, tokens and the ledger (none: in memory).")
    ] = None,
    database_url: Annotated[str | None, typer.Option(
        help="PostgreSQL instead of --db, for replicas: postgresql://USER@HOST:PORT/DB.")] = None,
    redis_url: Annotated[str | None, typer.Option(
        help="Replicated mode: the Redis every replica shares, redis://HOST:PORT/DB.")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Start the coordinator: the OpenAI API, the host websocket, the scheduler, the dashboard."""
    from andy_host.coordinator.runtime.serve import run_coordinator

    loaded = _load(config, _sections(locals(), SERVE_FLAGS))
    try:
        run_coordinator(loaded.coordinator)
    except ListenError as exc:
        typer.echo(f"andy-host: {exc}", err=True)
        raise typer.Exit(2) from None
