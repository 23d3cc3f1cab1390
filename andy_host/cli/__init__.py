"""The ``andy-host`` command: builds a Config from flags and calls one function.

One module per command group; each registers its commands on the shared ``app``.
"""

from __future__ import annotations

import importlib
import sys
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


# click's exceptions, from wherever this typer takes click (recent typers carry their own)
CLICK_ERRORS: Any = importlib.import_module(typer.BadParameter.__module__)


def main() -> None:
    """Run the command line; a usage error (an unknown flag, a value that is not a number)
    is one line on stderr and exit code 2, as every other usage error of ours."""
    try:
        code = command().main(prog_name="andy-host", standalone_mode=False)
    except CLICK_ERRORS.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "andy-host"
        print(f"{where}: {exc.format_message()} ({where} -h shows the options)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except CLICK_ERRORS.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CLICK_ERRORS.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
