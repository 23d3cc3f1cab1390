"""The ``andy-host`` command: builds a Config from flags and calls one function.

One module per command group; each registers its commands on the shared ``app``.
"""

from __future__ import annotations

from andy_host.cli import demo, hosts, join, keys, serve, service
from andy_host.cli.common import app

__all__ = ["app", "demo", "hosts", "join", "keys", "main", "serve", "service"]


def main() -> None:
    app()
