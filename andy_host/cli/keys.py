"""``andy-host coordinator keys`` and ``coordinator tokens``: API keys and host tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from andy_host.cli.common import ConfigOpt, DbOpt, _load, _table, _when, _with_store, coordinator_app

keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; shown once).")
tokens_app = typer.Typer(no_args_is_help=True, help="Host tokens for pools with enrolment = 'token'.")
coordinator_app.add_typer(keys_app, name="keys")
coordinator_app.add_typer(tokens_app, name="tokens")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    daily_limit: Annotated[
        int | None, typer.Option(min=1, help="Requests per UTC day (default: coordinator.default_daily_limit).")
    ] = None,
    per_minute: Annotated[
        int | None, typer.Option(min=1, help="Chat requests per minute (default: coordinator.default_per_minute).")
    ] = None,
    host_token: Annotated[
        str | None, typer.Option(help="Link to a host token (prefix or id): its hosts' work raises the limits.")
    ] = None,
    trusted_only: Annotated[
        bool, typer.Option("--trusted-only", help="Its requests go to hosts on trusted tokens only (503 if none).")
    ] = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Create an API key and print it (once)."""
    try:
        defaults = _load(config, {"coordinator": {"db": db}}).coordinator
        secret, _ = _with_store(config, db, lambda store: store.create_key(
            name, daily_limit or defaults.default_daily_limit, per_minute or defaults.default_per_minute, host_token,
            trusted_only=trusted_only))
    except KeyError as exc:
        typer.echo(f"andy-host: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    typer.echo(secret)
    typer.echo("Store this key now: it is not shown again.", err=True)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, db: DbOpt = None) -> None:
    """List keys: prefix, name, created, last used and usage today (never the key)."""
    rows = _with_store(config, db, lambda store: store.list_keys())
    for row in rows:
        row["created"], row["last_used"] = _when(row["created"]), _when(row["last_used"])
        row["status"] = "revoked" if row["revoked"] else "active"
    _table(rows, ["id", "prefix", "name", "status", "created", "last_used", "used_today", "daily_limit",
                  "per_minute", "host_token"])


@keys_app.command("revoke")
def keys_revoke(ident: Annotated[str, typer.Argument(help="The key's prefix (as listed) or id.")],
                config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Revoke a key; it stops working at once."""
    if not _with_store(config, db, lambda store: store.revoke_key(ident)):
        typer.echo(f"andy-host: no live key {ident!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {ident}")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="Whose host(s) will use it.")],
    trusted: Annotated[
        bool, typer.Option("--trusted", help="Your own machines: the reference for answer checks, and allowed "
                                             "traffic of --trusted-only keys.")
    ] = False,
    config: ConfigOpt = None, db: DbOpt = None,
) -> None:
    """Create a host token and print it (once); hosts join with --token."""
    secret, _ = _with_store(config, db, lambda store: store.create_token(name, trusted=trusted))
    typer.echo(secret)
    typer.echo("Store this token now: it is not shown again.", err=True)


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, db: DbOpt = None) -> None:
    """List host tokens with what their hosts served."""
    rows = _with_store(config, db, lambda store: store.list_tokens())
    for row in rows:
        row["created"] = _when(row["created"])
        row["status"] = "revoked" if row["revoked"] else ("banned" if row["banned"] else "active")
        row["trusted"] = "yes" if row["trusted"] else "-"
    _table(rows, ["id", "prefix", "name", "status", "trusted", "created", "requests", "tokens"])


@tokens_app.command("revoke")
def tokens_revoke(ident: Annotated[str, typer.Argument(help="The token's prefix (as listed) or id.")],
                  config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Revoke a host token; its hosts are disconnected within a second."""
    if not _with_store(config, db, lambda store: store.revoke_token(ident)):
        typer.echo(f"andy-host: no live host token {ident!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {ident}")

