"""``andy-host join``, ``probe`` and ``status``: the host side."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from andy_host.cli.common import ConfigOpt, LogFormatOpt, _load, app
from andy_host.config import default_config_path, load_config, save_agent_config
from andy_host.errors import ManagedError, ModelError

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

