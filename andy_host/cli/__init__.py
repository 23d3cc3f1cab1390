"""The ``andy-host`` command: builds a Config from flags and calls one function.

One module per command group; each registers its commands on the shared ``app``.
"""

from __future__ import annotations

from typing import Any

import typer

from andy_host.cli import demo, hosts, join, keys, live, serve, service
from andy_host.cli.common import app
from andy_host.cli.helptext import Layout, decorate

__all__ = ["app", "demo", "hosts", "join", "keys", "live", "main", "serve", "service"]


# Which config option each command's flags set (shown in --help with default and env name).
LAYOUTS: dict[str, Layout] = {
    "join": join.JOIN_FLAGS,
    "probe": join.PROBE_FLAGS,
    "status": join.STATUS_FLAGS,
    "coordinator serve": serve.SERVE_FLAGS,
}


def command() -> Any:
    """The click command tree, with the help rules of ``cli.helptext`` applied."""
    built = typer.main.get_command(app)
    decorate(built, LAYOUTS)
    return built


def main() -> None:
    command()(prog_name="andy-host")
