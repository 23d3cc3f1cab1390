"""The ``andy-host`` command: builds a Config from flags and calls one function.

Errors become exit codes here and only here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from andy_host import __version__, logs
from andy_host.config import Config, default_config_path, load_config, save_agent_config
from andy_host.coordinator.store import Store, open_store
from andy_host.errors import ConfigError, InstallError, ManagedError, ModelError

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


keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; shown once).")
tokens_app = typer.Typer(no_args_is_help=True, help="Host tokens for pools with enrolment = 'token'.")
coordinator_app.add_typer(keys_app, name="keys")
coordinator_app.add_typer(tokens_app, name="tokens")
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


hosts_app = typer.Typer(help="Hosts: the ledger and each host's standing; release or ban one.")
coordinator_app.add_typer(hosts_app, name="hosts")


@hosts_app.callback(invoke_without_command=True)
def coordinator_hosts(ctx: typer.Context, config: ConfigOpt = None, db: DbOpt = None) -> None:
    """The contribution ledger with each host's standing: requests, measured tokens,
    failures, time connected, checks passed and failed, strikes, quarantine or ban."""
    if ctx.invoked_subcommand is not None:
        return
    async def read(store: Store) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        return await store.standings(), await store.ledger()

    standings, rows = _with_store(config, db, read)
    for row in rows:
        standing = standings.get(row["host_id"], {})
        row["hours"] = f"{row['connected_seconds'] / 3600:.2f}"
        row["last_seen"] = _when(row["last_seen"])
        row["host_token"] = row["host_token"] or "-"
        row["checks"] = f"{standing.get('checks_passed', 0)}/{standing.get('checks_failed', 0)}"
        row["strikes"] = standing.get("strikes", 0)
        row["standing"] = (f"banned: {standing['banned']}" if standing.get("banned")
                           else f"quarantined: {standing['quarantined']}" if standing.get("quarantined")
                           else "trusted" if standing.get("trusted") else "ok")
    _table(rows, ["host_id", "name", "host_token", "requests", "tokens", "failures", "hours", "last_seen",
                  "checks", "strikes", "standing"])


@hosts_app.command("release")
def hosts_release(host_id: Annotated[str, typer.Argument(help="The host's id (as listed).")],
                  config: ConfigOpt = None, db: DbOpt = None) -> None:
    """End a host's quarantine; a running coordinator applies it within a second."""
    if not _with_store(config, db, lambda store: store.release_host(host_id)):
        typer.echo(f"andy-host: no host {host_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"released {host_id}")


@hosts_app.command("ban")
def hosts_ban(
    host_id: Annotated[str, typer.Argument(help="The host's id (as listed).")],
    reason: Annotated[str, typer.Option(help="Why (kept in the store, shown to the admin).")] = "banned by the admin",
    config: ConfigOpt = None, db: DbOpt = None,
) -> None:
    """Ban a host: its token (every host on it) or, for an open-enrolment host, its own id
    and secret. It survives reconnects; running coordinators disconnect it within a second."""
    banned = _with_store(config, db, lambda store: store.ban_host(host_id, reason))
    if banned is None:
        typer.echo(f"andy-host: no host {host_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"banned {banned}")


# Where each join flag goes in the config: section -> {config option: flag name}.
JOIN_FLAGS = {
    "agent": {"coordinator": "coordinator", "name": "name", "max_concurrency": "max_concurrency",
              "token": "token", "state_dir": "state_dir"},
    "backend": {"kind": "backend", "url": "backend_url", "managed": "managed", "model": "model",
                "model_name": "model_name"},
    "controls": {k: k for k in ("share_models", "deny_models", "min_free_vram_mib", "max_foreign_vram_mib",
                                "max_temperature", "active_hours")},
    "log": {"format": "log_format"},
}


def _sections(values: dict[str, Any], layout: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Flag values placed in their config sections (``layout``: section -> option -> flag)."""
    return {section: {option: values[flag] for option, flag in options.items()} for section, options in layout.items()}


@app.command()
def join(
    coordinator: Annotated[str | None, typer.Option(help="Coordinator base URL, e.g. http://pool:8080.")] = None,
    backend: Annotated[str | None, typer.Option(help="ollama or llamacpp.")] = None,
    backend_url: Annotated[str | None, typer.Option(help="URL of the local inference server.")] = None,
    name: Annotated[str | None, typer.Option(help="Name shown in the pool (default: hostname).")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Most jobs run at once.")] = None,
    token: Annotated[str | None, typer.Option(help="Host token, for pools that require one.")] = None,
    managed: Annotated[
        bool | None, typer.Option("--managed/--no-managed", help="Start and supervise llama-server.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="GGUF path for a managed llama-server, or 'smollm2-135m' / 'gemma3-270m' from PyPI."),
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Name the pool uses for that model.")] = None,
    state_dir: Annotated[str | None, typer.Option(help="Where the host id is kept.")] = None,
    share_models: Annotated[str | None, typer.Option(help="Models to share: patterns, comma-separated.")] = None,
    deny_models: Annotated[str | None, typer.Option(help="Models never shared: patterns, comma-separated.")] = None,
    min_free_vram_mib: Annotated[int | None, typer.Option(help="Pause below this much free VRAM (MiB).")] = None,
    max_foreign_vram_mib: Annotated[
        int | None, typer.Option(help="Pause while other processes use more VRAM than this (MiB).")
    ] = None,
    max_temperature: Annotated[int | None, typer.Option(help="Pause at or over this GPU temperature (°C).")] = None,
    active_hours: Annotated[
        str | None, typer.Option(help="Serve only between these local times, e.g. 22:00-08:00.")
    ] = None,
    config: ConfigOpt = None,
    save: Annotated[bool, typer.Option("--save", help="Write the effective config to the config file.")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Join a pool: share this machine's local Ollama or llama.cpp server."""
    from andy_host.agent.daemon import run_agent_forever

    flags = _sections(locals(), JOIN_FLAGS)
    loaded = _load(config, flags)
    if save:
        target = save_agent_config(loaded, config or default_config_path())
        typer.echo(f"saved the effective config to {target}", err=True)
    try:
        code = run_agent_forever(loaded, lambda: load_config(config, flags=flags))
    except Exception as exc:  # a clear last line instead of a traceback
        if isinstance(exc, (ManagedError, ModelError, ValueError)):
            typer.echo(f"andy-host: {exc}", err=True)
            raise typer.Exit(1) from None
        raise
    if code:
        raise typer.Exit(code)


@app.command()
def probe(
    backend: Annotated[str | None, typer.Option(help="ollama or llamacpp.")] = None,
    backend_url: Annotated[str | None, typer.Option(help="URL of the local inference server.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """What this machine would contribute: GPUs, the backend, its models, which are shared."""
    import asyncio
    import json

    from andy_host.agent.probe import print_report, run_probe

    loaded = _load(config, {"backend": {"kind": backend, "url": backend_url}})
    report = asyncio.run(run_probe(loaded))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    if not report["backend"]["reachable"]:
        raise typer.Exit(1)


@app.command()
def status(
    name: Annotated[str | None, typer.Option(help="The host's name, when several daemons run here.")] = None,
    state_dir: Annotated[str | None, typer.Option(help="The daemon's state directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Is the local daemon connected, what is it doing, how are its GPUs."""
    import asyncio
    import json

    import aiohttp

    from andy_host.agent.identity import state_dir as resolve_state_dir
    from andy_host.agent.status import read_status, render, socket_path

    loaded = _load(config, {"agent": {"state_dir": state_dir, "name": name}})
    directory = resolve_state_dir(loaded.agent.state_dir)
    if name or loaded.agent.name:
        sockets = [socket_path(directory, loaded.agent.effective_name())]
    else:
        sockets = sorted(directory.glob("status-*.sock")) or [socket_path(directory, loaded.agent.effective_name())]
    found = 0
    for path in sockets:
        try:
            data = asyncio.run(read_status(path))
        except (aiohttp.ClientError, OSError, TimeoutError):
            typer.echo(f"andy-host is not running: no daemon answers at {path}.\n"
                       "Start it with `andy-host join --coordinator URL ...` or `systemctl start andy-host`.")
            continue
        found += 1
        typer.echo(json.dumps(data, indent=2) if as_json else render(data))
    if not found:
        raise typer.Exit(1)


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


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Coordinator port.")] = 8080,
    host: Annotated[str, typer.Option(help="Coordinator address.")] = "127.0.0.1",
    threads: Annotated[int, typer.Option(help="llama-server threads (0: all cores).")] = 0,
) -> None:
    """Install what is missing, start a coordinator and a host with the small model, and serve."""
    from andy_host.demo import run_demo

    raise typer.Exit(run_demo(host, port, threads))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
