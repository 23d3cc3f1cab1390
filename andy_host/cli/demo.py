"""``andy-host demo``: a one-command pool with the small model."""

from __future__ import annotations

from typing import Annotated

import typer

from andy_host.cli.common import app
from andy_host.errors import ListenError


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Coordinator port.")] = 8080,
    host: Annotated[str, typer.Option(help="Coordinator address.")] = "127.0.0.1",
    threads: Annotated[int, typer.Option(help="llama-server threads (0: all cores).")] = 0,
) -> None:
    """Install what is missing, start a coordinator and a host with the small model, and serve."""
    from andy_host.demo import run_demo

    try:
        code = run_demo(host, port, threads)
    except ListenError as exc:  # a port in use: one line, as for coordinator serve
        typer.echo(f"andy-host demo: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)

