"""The ``andy-host`` command: builds a Config from flags and calls one function.

Errors become exit codes here and only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from andy_host import __version__, logs
from andy_host.config import Config, default_config_path, load_config, save_agent_config
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
        str | None, typer.Option(help="GGUF path for a managed llama-server, or 'gemma3-270m'.")
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Name the pool uses for that model.")] = None,
    state_dir: Annotated[str | None, typer.Option(help="Where the host id is kept.")] = None,
    config: ConfigOpt = None,
    save: Annotated[bool, typer.Option("--save", help="Write the effective config to the config file.")] = False,
    log_format: LogFormatOpt = None,
) -> None:
    """Join a pool: share this machine's local Ollama or llama.cpp server."""
    from andy_host.agent.daemon import run_agent_forever

    loaded = _load(
        config,
        {
            "agent": {
                "coordinator": coordinator,
                "name": name,
                "max_concurrency": max_concurrency,
                "token": token,
                "state_dir": state_dir,
            },
            "backend": {
                "kind": backend,
                "url": backend_url,
                "managed": managed,
                "model": model,
                "model_name": model_name,
            },
            "log": {"format": log_format},
        },
    )
    if save:
        target = save_agent_config(loaded, config or default_config_path())
        typer.echo(f"saved the effective config to {target}", err=True)
    try:
        run_agent_forever(loaded)
    except Exception as exc:  # a clear last line instead of a traceback
        from andy_host.agent.managed import ManagedError
        from andy_host.tools.model import ModelError

        if isinstance(exc, (ManagedError, ModelError, ValueError)):
            typer.echo(f"andy-host: {exc}", err=True)
            raise typer.Exit(1) from None
        raise


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
