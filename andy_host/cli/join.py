"""``andy-host join``, ``probe`` and ``status``: the host side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from andy_host.cli.common import ConfigOpt, LogFormatOpt, _load, _sections, app
from andy_host.config import default_config_path, load_config, save_agent_config
from andy_host.errors import ManagedError, ModelError

# Where each join flag goes in the config: section -> {config option: flag name}.
JOIN_FLAGS = {
    "agent": {"coordinator": "coordinator", "name": "name", "max_concurrency": "max_concurrency",
              "token": "token", "state_dir": "state_dir", "ca_file": "ca_file"},
    "backend": {"kind": "backend", "url": "backend_url", "managed": "managed", "model": "model",
                "model_name": "model_name", "ctx_size": "ctx_size"},
    "controls": {k: k for k in ("share_models", "deny_models", "min_free_vram_mib", "max_foreign_vram_mib",
                                "max_temperature", "active_hours")},
    "log": {"format": "log_format"},
}
PROBE_FLAGS = {"backend": {"kind": "backend", "url": "backend_url", "managed": "managed", "model": "model"}}
STATUS_FLAGS = {"agent": {"state_dir": "state_dir", "name": "name"}}


def _no_coordinator(config: Path | None) -> str:
    return ("andy-host join: no coordinator given: pass --coordinator URL (e.g. http://pool.example:8080), "
            f"or set agent.coordinator in {config or default_config_path()}, or ANDY_HOST_AGENT_COORDINATOR.")


@app.command()
def join(
    coordinator: Annotated[
        list[str] | None,
        typer.Option(metavar="URL", help="Coordinator base URL, e.g. http://pool:8080; repeat it for several replicas. "
                          "Required: this flag, agent.coordinator or the environment."),
    ] = None,
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
    ctx_size: Annotated[
        int | None,
        typer.Option(metavar="TOKENS", help="A managed llama-server's context per slot: the most tokens one request "
                     "(prompt and answer) may hold; it runs with -c TOKENS*parallel -np parallel."),
    ] = None,
    state_dir: Annotated[str | None, typer.Option(help="Where the host id is kept.")] = None,
    ca_file: Annotated[
        str | None, typer.Option(help="PEM CA certificate(s) to trust for an https:// coordinator (docs/tls.md).")
    ] = None,
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

    coordinator = coordinator or None  # no --coordinator at all: the config's
    flags = _sections(locals(), JOIN_FLAGS)
    loaded = _load(config, flags)
    if not loaded.agent.coordinator:
        typer.echo(_no_coordinator(config), err=True)
        raise typer.Exit(2)
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
    managed: Annotated[bool | None, typer.Option(
        "--managed/--no-managed", help="Describe the llama-server join --managed would start (starts nothing).")
    ] = None,
    model: Annotated[str | None, typer.Option(
        help="With --managed: a GGUF path, or 'smollm2-135m' / 'gemma3-270m' from PyPI.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """What this machine would contribute: GPUs (or its CPU, without one), the backend, its
    models, which are shared. Exit 1 when the backend is not reachable (with --managed:
    when llama-server or the model file is missing)."""
    import asyncio
    import json

    from andy_host.agent.probe import print_report, run_probe

    loaded = _load(config, _sections(locals(), PROBE_FLAGS))
    report = asyncio.run(run_probe(loaded))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    if not report["backend"]["ready"]:
        raise typer.Exit(1)


@app.command()
def status(
    name: Annotated[str | None, typer.Option(help="The host's name, when several daemons run here.")] = None,
    state_dir: Annotated[str | None, typer.Option(help="The daemon's state directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Is the local daemon connected, what is it doing, how are its GPUs.

    With --json: one JSON object ({"running": false, ...} when no daemon answers; exit 1),
    or a list of them when several daemons have a socket in the state directory."""
    import json

    from andy_host.agent.status import query_daemons, render, render_absent

    loaded = _load(config, _sections(locals(), STATUS_FLAGS))
    found = query_daemons(loaded.agent, explicit=bool(name or loaded.agent.name))
    if as_json:
        typer.echo(json.dumps(found[0] if len(found) == 1 else found, indent=2))
    else:
        typer.echo("\n".join(render(d) if d["running"] else render_absent(d) for d in found))
    if not any(d["running"] for d in found):
        raise typer.Exit(1)
