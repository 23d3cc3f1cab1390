"""What every command shares: the app objects, the common options, config loading, the store
and the table printer. Errors become exit codes in the commands, and only there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from andy_host import logs
from andy_host.config import Config, load_config
from andy_host.coordinator.store.interface import Store, open_store
from andy_host.errors import ConfigError

# -h is --help on every command (inherited by sub-contexts; cli.helptext sets it too)
app = typer.Typer(no_args_is_help=True, add_completion=False, help="A distributed AI compute pool.",
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False)
coordinator_app = typer.Typer(no_args_is_help=True, help="Run and administer the coordinator.")
app.add_typer(coordinator_app, name="coordinator")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file (see config.example.toml).")]
LogFormatOpt = Annotated[
    str | None, typer.Option("--log-format", help="auto (console on a terminal), console or json.")
]


def _load(config: Path | None, flags: dict[str, dict[str, Any]]) -> Config:
    try:
        loaded = load_config(config, flags=flags)
    except ConfigError as exc:
        typer.echo(f"andy-host: {exc}", err=True)
        raise typer.Exit(2) from None
    logs.configure(loaded.log.format, loaded.log.level)
    return loaded


def _sections(values: dict[str, Any], layout: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Flag values placed in their config sections (``layout``: section -> option -> flag; the
    same layout tells ``cli.helptext`` which default and environment name each flag shows)."""
    return {section: {option: values[flag] for option, flag in options.items()} for section, options in layout.items()}


DB_HELP = ("The coordinator's SQLite database file (else coordinator.db of --config, or "
           "ANDY_HOST_COORDINATOR_DB); it must exist{}. A postgresql:// URL (or "
           "coordinator.database_url) names the replicas' PostgreSQL instead.")
DbOpt = Annotated[str | None, typer.Option("--db", "--database-url", help=DB_HELP.format(""))]
# for the commands that take --create (keys create, tokens create)
DbCreateOpt = Annotated[str | None, typer.Option("--db", "--database-url", help=DB_HELP.format(" unless --create"))]
CreateOpt = Annotated[bool, typer.Option("--create", help="Create the database file when it does not exist.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


T = TypeVar("T")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _with_store(config: Path | None, db: str | None, action: Callable[[Store], Awaitable[T]],
                create: bool | None = None) -> T:
    """Open the configured store, run ``action`` on it, close it. A database file that
    does not exist is an error (exit 2) unless ``create``: a typo must not make an empty one.
    ``create`` is None for the commands that have no --create flag to suggest."""
    is_url = db is not None and db.startswith(POSTGRES_SCHEMES)
    loaded = _load(config, {"coordinator": {"database_url": db} if is_url else {"db": db}})
    url = loaded.coordinator.database_url
    path = loaded.coordinator.db
    if not path and not url:
        _fail("no database: pass --db FILE or set coordinator.db in the config")
    if not url and path != ":memory:" and not create and not Path(path).expanduser().exists():
        _fail(f"no database file {path} (pass --create to make a new one)" if create is not None else
              f"no database file {path} (the coordinator's --db FILE; keys create --create makes a new one)")

    async def main() -> T:
        store = await open_store(path, url)
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _fail(message: str, code: int = 2) -> NoReturn:
    """A one-line error on stderr and the exit code (2: a usage error)."""
    typer.echo(f"andy-host: {message}", err=True)
    raise typer.Exit(code)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [["-" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
