"""Running as a systemd service: the two roles, their unit files and where each lives.

Each role has its own unit and its own config file, so both can be installed on one
machine: the host (``andy-host.service``, ``/etc/andy-host/host.toml``) and the
coordinator (``andy-coordinator.service``, ``/etc/andy-host/coordinator.toml``). The
unit texts live here (``systemd/*.service`` in the repository are these, rendered with
the defaults; a test keeps them identical). What ``service install``, ``uninstall`` and
``status`` do with them is in ``serviceplan`` and ``servicestatus``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
After=network-online.target ollama.service andy-coordinator.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={prefix}/bin/andy-host join --config {config} --log-format json
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
ExecStart={prefix}/bin/andy-host coordinator serve --config {config} --log-format json
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


CONFIG_DIR = Path("/etc/andy-host")
UNIT_DIR = Path("/etc/systemd/system")
STATE_DIR = Path("/var/lib/andy-host")
CACHE_DIR = Path("/var/cache/andy-host")
WANTED_BY = "multi-user.target"


@dataclass(frozen=True, slots=True)
class Role:
    name: str  # host | coordinator
    unit: str
    config: str  # the file name under /etc/andy-host
    template: str


ROLES = {
    "host": Role("host", "andy-host.service", "host.toml", HOST_UNIT),
    "coordinator": Role("coordinator", "andy-coordinator.service", "coordinator.toml", COORDINATOR_UNIT),
}


def role(name: str) -> Role:
    return ROLES[name]


def render_unit(role_name: str, prefix: str = "/opt/andy-host", user: str = "andy-host") -> str:
    spec = ROLES[role_name]
    return spec.template.format(prefix=prefix, user=user, hardening=HARDENING, config=CONFIG_DIR / spec.config)


def unit_name(role_name: str) -> str:
    return ROLES[role_name].unit


def under(root: Path, path: Path) -> Path:
    """``path`` (absolute, as the service sees it) inside an install root."""
    return root / path.relative_to("/")


def config_path(role_name: str, root: Path = Path("/")) -> Path:
    return under(root, CONFIG_DIR / ROLES[role_name].config)


def unit_path(role_name: str, root: Path = Path("/")) -> Path:
    return under(root, UNIT_DIR / ROLES[role_name].unit)
