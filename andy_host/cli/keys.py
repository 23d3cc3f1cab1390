"""``andy-host coordinator keys`` and ``coordinator tokens``: API keys and host tokens.

They write the database file directly; a running coordinator sees a new, changed or
revoked key within ``key_recheck`` (50 ms) and a revoked token within ``flush_interval``.
An unknown key or token is a one-line error with exit code 2.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer

from andy_host.cli.common import (
    ConfigOpt,
    CreateOpt,
    DbCreateOpt,
    DbOpt,
    JsonOpt,
    _fail,
    _load,
    _print_json,
    _table,
    _when,
    _with_store,
    coordinator_app,
)
from andy_host.coordinator.access.keyscope import ScopeError, parse_expires, parse_models, when_text
from andy_host.coordinator.admin.listing import key_listing, token_listing
from andy_host.coordinator.store.interface import AmbiguousIdent, KeyChanges, Store

keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; shown once).")
tokens_app = typer.Typer(no_args_is_help=True, help="Host tokens for pools with enrolment = 'token'.")
coordinator_app.add_typer(keys_app, name="keys")
coordinator_app.add_typer(tokens_app, name="tokens")

ExpiresOpt = Annotated[str | None, typer.Option(
    help="When the key stops working: a duration (30d, 12h, 90m) or an ISO date/time (UTC); 'never' removes it.")]
ModelsOpt = Annotated[str | None, typer.Option(
    help="Models the key may use: names or patterns, comma-separated ('llama3*,sweaterdog/*'); '*' for all.")]


def _scope(expires: str | None, models: str | None) -> tuple[float | None, tuple[str, ...] | None]:
    try:
        return (None if expires is None else parse_expires(expires),
                None if models is None else parse_models(models))
    except ScopeError as exc:
        _fail(str(exc))


def _by_ident(config: Path | None, db: str | None, change: Callable[[Store], Awaitable[bool]]) -> bool:
    """A change to the key or token an id or listed prefix names; exit 2 when the prefix
    is shared by several (the message lists their ids)."""
    try:
        return _with_store(config, db, change)
    except AmbiguousIdent as exc:
        _fail(str(exc))


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
    expires: ExpiresOpt = None,
    models: ModelsOpt = None,
    config: ConfigOpt = None,
    db: DbCreateOpt = None,
    create: CreateOpt = False,
) -> None:
    """Create an API key and print it (once)."""
    until, scope = _scope(expires, models)
    defaults = _load(config, {"coordinator": {"db": db}}).coordinator
    try:
        secret, _ = _with_store(config, db, lambda store: store.create_key(
            name, daily_limit or defaults.default_daily_limit, per_minute or defaults.default_per_minute, host_token,
            trusted_only=trusted_only, expires=until or None, models=scope or ()), create=create)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    typer.echo(secret)
    typer.echo("Store this key now: it is not shown again.", err=True)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List keys: prefix, name, status, created, last used, usage today, limits, expiry
    and models (never the key)."""
    rows = [key_listing(r) for r in _with_store(config, db, lambda store: store.list_keys())]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        row["created"], row["last_used"] = _when(row["created"]), _when(row["last_used"])
        row["expires"] = when_text(row["expires"])
        row["models"] = ",".join(row["models"]) or "*"
        row["trusted_only"] = "yes" if row["trusted_only"] else "-"
    _table(rows, ["id", "prefix", "name", "status", "created", "last_used", "used_today", "daily_limit",
                  "per_minute", "expires", "models", "trusted_only", "host_token"])


@keys_app.command("update")
def keys_update(
    ident: Annotated[str, typer.Argument(help="The key's prefix (as listed) or id.")],
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    daily_limit: Annotated[int | None, typer.Option(min=1, help="Requests per UTC day.")] = None,
    per_minute: Annotated[int | None, typer.Option(min=1, help="Chat requests per minute.")] = None,
    expires: ExpiresOpt = None,
    models: ModelsOpt = None,
    trusted_only: Annotated[bool | None, typer.Option(
        "--trusted-only/--any-host", help="Keep its requests on trusted hosts, or let them go to any host.")] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Change a key's name, limits, expiry, models or trusted-only; what is not given
    stays. A running coordinator applies it within a second."""
    until, scope = _scope(expires, models)
    changes = KeyChanges(name=name, daily_limit=daily_limit, per_minute=per_minute, expires=until, models=scope,
                         trusted_only=trusted_only)
    if changes.empty():
        _fail("nothing to change: give --name, --daily-limit, --per-minute, --expires, --models or --trusted-only")
    if not _by_ident(config, db, lambda store: store.update_key(ident, changes)):
        _fail(f"no live key {ident!r} (keys list shows them)")
    typer.echo(f"updated {ident}")


@keys_app.command("revoke")
def keys_revoke(ident: Annotated[str, typer.Argument(help="The key's prefix (as listed) or id.")],
                config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Revoke a key; it stops working at once."""
    if not _by_ident(config, db, lambda store: store.revoke_key(ident)):
        _fail(f"no live key {ident!r} (keys list shows them)")
    typer.echo(f"revoked {ident}")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="Whose host(s) will use it.")],
    trusted: Annotated[
        bool, typer.Option("--trusted", help="Your own machines: the reference for answer checks, and allowed "
                                             "traffic of --trusted-only keys.")
    ] = False,
    config: ConfigOpt = None, db: DbCreateOpt = None, create: CreateOpt = False,
) -> None:
    """Create a host token and print it (once); hosts join with --token."""
    secret, _ = _with_store(config, db, lambda store: store.create_token(name, trusted=trusted), create=create)
    typer.echo(secret)
    typer.echo("Store this token now: it is not shown again.", err=True)


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List host tokens with what their hosts served."""
    rows = [token_listing(row) for row in _with_store(config, db, lambda store: store.list_tokens())]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        row["created"] = _when(row["created"])
        row["trusted"] = "yes" if row["trusted"] else "-"
    _table(rows, ["id", "prefix", "name", "status", "trusted", "created", "requests", "tokens"])


@tokens_app.command("revoke")
def tokens_revoke(ident: Annotated[str, typer.Argument(help="The token's prefix (as listed) or id.")],
                  config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Revoke a host token; its hosts are disconnected within a second."""
    if not _by_ident(config, db, lambda store: store.revoke_token(ident)):
        _fail(f"no live host token {ident!r} (tokens list shows them)")
    typer.echo(f"revoked {ident}")

