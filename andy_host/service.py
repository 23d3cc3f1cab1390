"""Running as a systemd service: the unit files, and ``andy-host service install``.

The unit texts live here (``systemd/*.service`` in the repository are these, rendered
with the defaults; a test keeps them identical). ``install`` writes the config
(tomli-w) and the unit, creates the service user, and enables and starts the unit;
``--dry-run`` prints every file and command instead, and a ``--root`` other than
``/`` writes the files there and prints the commands (nothing is run).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from andy_host.errors import InstallError

HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
"""

HOST_UNIT = """\
[Unit]
Description=andy-host: share this machine's GPU with an andy-host pool
Documentation=man:systemd.service(5)
After=network-online.target ollama.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={prefix}/bin/andy-host join --config /etc/andy-host/config.toml --log-format json
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM drains: running jobs finish (agent.drain_timeout), then the daemon exits 0
TimeoutStopSec=90
WatchdogSec=30
Restart=on-failure
RestartSec=5
# 78: the coordinator refused this host for good (revoked or unknown token, a host id
# that is not ours, a ban, an old protocol): restarting cannot help until a person acts
RestartPreventExitStatus=78
LimitNOFILE=65536
User={user}
Group={user}
# GPU device nodes belong to these groups
SupplementaryGroups=video render
StateDirectory=andy-host
CacheDirectory=andy-host
ConfigurationDirectory=andy-host
Environment=ANDY_HOST_CACHE=/var/cache/andy-host
{hardening}
[Install]
WantedBy=multi-user.target
"""

COORDINATOR_UNIT = """\
[Unit]
Description=andy-host coordinator: the pool's OpenAI-compatible API
Documentation=man:systemd.service(5)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={prefix}/bin/andy-host coordinator serve --config /etc/andy-host/config.toml --log-format json
# SIGTERM: stop accepting, let open streams finish (coordinator.shutdown_grace), hosts told 1012
TimeoutStopSec=60
WatchdogSec=30
Restart=on-failure
RestartSec=5
# every host and client is a socket: far more than the default 1024 open files
LimitNOFILE=65536
User={user}
Group={user}
StateDirectory=andy-host
ConfigurationDirectory=andy-host
{hardening}
[Install]
WantedBy=multi-user.target
"""


def render_unit(role: str, prefix: str = "/opt/andy-host", user: str = "andy-host") -> str:
    template = HOST_UNIT if role == "host" else COORDINATOR_UNIT
    return template.format(prefix=prefix, user=user, hardening=HARDENING)


def unit_name(role: str) -> str:
    return "andy-host.service" if role == "host" else "andy-coordinator.service"





@dataclass
class Plan:
    files: dict[Path, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)


def plan_install(role: str, settings: dict[str, dict[str, object]], root: Path, prefix: str, user: str) -> Plan:
    plan = Plan()
    etc = root / "etc"
    plan.files[etc / "andy-host" / "config.toml"] = tomli_w.dumps(
        {section: {k: v for k, v in values.items() if v is not None} for section, values in settings.items()}
    )
    plan.files[etc / "systemd" / "system" / unit_name(role)] = render_unit(role, prefix, user)
    if shutil.which("getent") is None or subprocess.run(
        ["getent", "passwd", user], capture_output=True
    ).returncode != 0 or root != Path("/"):
        plan.commands.append(["useradd", "--system", "--user-group", "--home-dir", "/var/lib/andy-host",
                              "--shell", "/usr/sbin/nologin", user])
    plan.commands += [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", unit_name(role)]]
    return plan


def check_backend(kind: str, managed: bool, llama_server: str | None) -> None:
    """Refuse, naming the fix, when the backend this host would wrap is not here."""
    if kind == "ollama":
        if shutil.which("ollama") is None:
            raise InstallError(
                "Ollama was not found: install it (https://ollama.com/download), or use "
                "--backend llamacpp with llama.cpp's llama-server"
            )
        return
    from andy_host.tools.llama_build import find_llama_server

    if find_llama_server(llama_server) is None:
        raise InstallError(
            "llama.cpp's llama-server was not found: run scripts/install-llama-server, put llama-server "
            "on PATH, or pass --llama-server PATH"
            + (" (needed for --managed)" if managed else "")
        )


def execute(plan: Plan, root: Path, dry_run: bool, echo: object = print) -> None:
    say = echo if callable(echo) else print
    for path, text in plan.files.items():
        if dry_run:
            say(f"--- would write {path} ---\n{text}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            os.chmod(path, 0o640 if path.name == "config.toml" else 0o644)
            say(f"wrote {path}")
    for command in plan.commands:
        line = shlex.join(command)
        if dry_run or root != Path("/"):
            say(f"would run: {line}")
            continue
        say(f"running: {line}")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise InstallError(f"`{line}` failed: {result.stderr.strip() or result.stdout.strip()}")
