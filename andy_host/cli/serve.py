"""``andy-host version`` and ``andy-host coordinator serve``."""

from __future__ import annotations

from typing import Annotated

import typer

from andy_host import __version__
from andy_host.cli.common import ConfigOpt, LogFormatOpt, _load, app, coordinator_app


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@coordinator_app.command("serve")
def coordinator_serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (0 picks a free one).")] = None,
    config: ConfigOpt = None,
    db: Annotated[str | None, typer.Option(help="SQLite database file.")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Start the coordinator: the OpenAI API, the host websocket, the scheduler."""
    from andy_host.coordinator.app import run_coordinator

    loaded = _load(
        config, {"coordinator": {"host": host, "port": port, "db": db}, "log": {"format": log_format}}
    )
    run_coordinator(loaded.coordinator)

