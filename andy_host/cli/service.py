"""``andy-host service``: install, uninstall and inspect andy-host as systemd services."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from andy_host.cli.common import JsonOpt, app
from andy_host.errors import InstallError

service_app = typer.Typer(no_args_is_help=True, help="Run andy-host as a systemd service.")
app.add_typer(service_app, name="service")

ROLES = ("host", "coordinator")
RoleOpt = Annotated[str, typer.Option(help="host (join a pool) or coordinator.")]
RootOpt = Annotated[Path, typer.Option(help="Act under this root (files only; commands printed).")]
UserOpt = Annotated[str, typer.Option(help="The service's system user.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print every file and command; change nothing.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"andy-host: {message}", err=True)
    return typer.Exit(code)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise _fail("--role must be host or coordinator", 2)


def _check_root(action: str, root: Path, dry_run: bool) -> None:
    if not dry_run and root == Path("/") and os.geteuid() != 0:
        raise _fail(f"service {action} must run as root (sudo andy-host service {action} ...), "
                    "or pass --dry-run to see what it would do")


def _check_prefix(prefix: str, root: Path, dry_run: bool) -> None:
    """The unit runs ``<prefix>/bin/andy-host``: on this system, a prefix without it would
    give a service that fails at every start (status 203/EXEC), so a real install refuses it
    and --dry-run warns. Under --root the prefix may be made later: not checked."""
    if root != Path("/") or (Path(prefix) / "bin" / "andy-host").exists():
        return
    here = Path(sys.prefix)
    message = (f"{prefix}/bin/andy-host does not exist (yet), and the unit runs it: install andy-host "
               f"there first (scripts/install.sh does), or pass --prefix with the virtualenv it is in"
               + (f" (this one: --prefix {here})" if (here / "bin" / "andy-host").exists() else ""))
    if not dry_run:
        raise _fail(message, 2)
    typer.echo(f"warning: {message}", err=True)


def _host_settings(
    coordinator: str | None, backend: str, backend_url: str | None, managed: bool, llama_server: str | None,
    agent: dict[str, object], model: str | None,
) -> dict[str, dict[str, object]]:
    from andy_host.service.plan import check_backend, needs_local_backend

    if not coordinator:
        raise _fail("--coordinator URL is required for a host", 2)
    if needs_local_backend(backend_url, managed):
        try:
            check_backend(backend, managed, llama_server)
        except InstallError as exc:
            raise _fail(str(exc)) from None
    return {
        "agent": {"coordinator": coordinator, **agent},
        "backend": {"kind": backend, "url": backend_url, "managed": managed or None, "model": model,
                    "llama_server": llama_server},
        "log": {"format": "json"},
    }


@service_app.command("install")
def service_install(
    role: RoleOpt = "host",
    coordinator: Annotated[str | None, typer.Option(help="Coordinator URL (host role).")] = None,
    backend: Annotated[str, typer.Option(help="ollama or llamacpp (host role).")] = "ollama",
    backend_url: Annotated[str | None, typer.Option(
        help="The inference server's URL; one on another machine or in a container needs no local binary.")] = None,
    name: Annotated[str | None, typer.Option(help="Name shown in the pool.")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Most jobs at once.")] = None,
    token: Annotated[str | None, typer.Option(help="Host token.")] = None,
    managed: Annotated[bool, typer.Option("--managed/--no-managed", help="Run llama-server itself.")] = False,
    model: Annotated[
        str | None, typer.Option(help="GGUF path, or 'smollm2-135m' / 'gemma3-270m' (managed).")
    ] = None,
    llama_server: Annotated[str | None, typer.Option(help="llama-server binary.")] = None,
    host: Annotated[str, typer.Option(
        help="Listen address (coordinator role): loopback for nginx in front (docs/tls.md); 0.0.0.0 for every "
             "address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port (coordinator role).")] = 8080,
    root: RootOpt = Path("/"),
    prefix: Annotated[str, typer.Option(help="Where the virtualenv with andy-host lives.")] = "/opt/andy-host",
    user: UserOpt = "andy-host",
    dry_run: DryRunOpt = False,
) -> None:
    """Write the role's config and unit, create the user, enable and start the service.

    The coordinator role also gets an admin token (coordinator.admin_token), printed once."""
    from andy_host.service.plan import execute, plan_install

    _check_role(role)
    _check_root("install", root, dry_run)
    _check_prefix(prefix, root, dry_run)
    settings: dict[str, dict[str, object]]
    if role == "host":
        agent: dict[str, object] = {"name": name, "max_concurrency": max_concurrency, "token": token}
        settings = _host_settings(coordinator, backend, backend_url, managed, llama_server, agent, model)
    else:
        from andy_host.service.plan import loopback_proxies

        settings = {"coordinator": {"host": host, "port": port, "db": "/var/lib/andy-host/pool.db",
                                    "trusted_proxies": loopback_proxies(host)},
                    "log": {"format": "json"}}
    try:
        execute(plan_install(role, settings, root, prefix, user), root, dry_run, typer.echo)
    except (InstallError, OSError) as exc:
        raise _fail(str(exc)) from None


@service_app.command("uninstall")
def service_uninstall(
    role: RoleOpt = "host",
    purge: Annotated[bool, typer.Option("--purge", help="Also remove the role's config and data.")] = False,
    root: RootOpt = Path("/"),
    user: UserOpt = "andy-host",
    dry_run: DryRunOpt = False,
) -> None:
    """Stop and disable the service and remove its unit; config and data stay unless --purge."""
    from andy_host.service.plan import execute, plan_uninstall

    _check_role(role)
    _check_root("uninstall", root, dry_run)
    try:
        execute(plan_uninstall(role, root, purge, user), root, dry_run, typer.echo)
    except (InstallError, OSError) as exc:
        raise _fail(str(exc)) from None


@service_app.command("status")
def service_status(
    role: Annotated[str | None, typer.Option(help="host or coordinator (default: both).")] = None,
    root: RootOpt = Path("/"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the systemctl commands instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Whether each role's service is installed, enabled and active."""
    from andy_host.service.status import role_status

    if role is not None:
        _check_role(role)
    say = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    found = [role_status(name, root, dry_run, say) for name in ((role,) if role else ROLES)]
    if as_json:
        typer.echo(json.dumps([status.as_dict() for status in found], indent=2))
        return
    for status in found:
        typer.echo(status.line())
