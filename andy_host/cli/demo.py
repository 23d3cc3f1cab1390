"""``andy-host demo``: a one-command pool with the small model."""

from __future__ import annotations

from typing import Annotated

import typer

from andy_host.cli.common import app
from andy_host.errors import ConfigError, ListenError

# SmolLM2-135M's training context: a real Mindcraft system prompt (about 2,200 tokens) and
# some turns fit; its KV cache is about 22 KiB a token, 360 MiB for both slots.
DEMO_CTX_SIZE = 8192


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Coordinator port.")] = 8080,
    host: Annotated[str, typer.Option(help="Coordinator address.")] = "127.0.0.1",
    threads: Annotated[int, typer.Option(help="llama-server threads (0: all cores).")] = 0,
    ctx_size: Annotated[
        int, typer.Option(metavar="TOKENS", help="llama-server's context per slot (2 slots): the most tokens one "
                          "request may hold; the default holds a Mindcraft system prompt and some turns.")
    ] = DEMO_CTX_SIZE,
    admin_token: Annotated[str, typer.Option(
        envvar="ANDY_HOST_COORDINATOR_ADMIN_TOKEN", show_envvar=False,  # -h shows it, as for config options
        help="Turn the admin API on with this token (andy-host coordinator status --admin-token).")] = "",
    admin: Annotated[bool, typer.Option(
        "--admin", help="Turn the admin API on with a token made for this run, printed once.")] = False,
    anonymous_endpoints: Annotated[str | None, typer.Option(
        metavar="NAME=N,...", help="What clients without a key may use besides chat (coordinator."
        "anonymous_endpoints), e.g. 'embeddings=30' for Mindcraft's Ollama class.")] = None,
) -> None:
    """Install what is missing, start a coordinator and a host with the small model, and serve."""
    from andy_host.demo import run_demo

    try:
        anonymous = None if anonymous_endpoints is None else anonymous_endpoints.replace(",", " ").split()
        code = run_demo(host, port, threads, ctx_size, admin_token=admin_token, admin=admin, anonymous=anonymous)
    except ListenError as exc:  # a port in use: one line, as for coordinator serve
        typer.echo(f"andy-host demo: {exc}", err=True)
        raise typer.Exit(2) from None
    except ConfigError as exc:  # a --ctx-size out of bounds, a malformed --anonymous-endpoints
        typer.echo(f"andy-host demo: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)

