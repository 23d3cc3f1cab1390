"""What every command shares: the app objects, the common options, config loading, the store
and the table printer. Errors become exit codes in the commands, and only there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from andy_host import logs
from andy_host.config import Config, load_config
from andy_host.coordinator.store import Store, open_store
from andy_host.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="A distributed AI compute pool.")
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

DbOpt = Annotated[str | None, typer.Option("--db", help="SQLite database file (default: coordinator.db).")]


T = TypeVar("T")


def _with_store(config: Path | None, db: str | None, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run ``action`` on it, close it."""
    loaded = _load(config, {"coordinator": {"db": db}})
    if not loaded.coordinator.db:
        typer.echo("andy-host: no database: pass --db FILE or set coordinator.db in the config", err=True)
        raise typer.Exit(2)

    async def main() -> T:
        store = await open_store(loaded.coordinator.db)
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
