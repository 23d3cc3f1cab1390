"""``andy-host service status``: is each role's unit installed, enabled and active?

Installed: its unit file is there. Enabled: ``systemctl --root=ROOT is-enabled``, which
reads the unit's symlinks and needs no running systemd. Active: ``systemctl
is-active``, asked only of the running system (``/`` booted with systemd); anywhere
else it is ``unknown``. ``--dry-run`` prints the commands instead of running them.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from andy_host.service.units import ROLES, config_path, unit_path

ROOT = Path("/")
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class RoleStatus:
    role: str
    unit: str
    unit_path: str
    config_path: str
    installed: bool
    config: bool  # the role's config file is there
    enabled: str | None  # enabled | disabled | ... as systemctl says, unknown; None when not installed
    active: str | None  # active | inactive | failed | ... as systemctl says, unknown; None when not installed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if not self.installed:
            state = "not installed" + (f" (its config {self.config_path} is left)" if self.config else "")
        else:
            state = f"installed, {self.enabled}, {self.active}; config {self.config_path}"
            if not self.config:
                state += " (missing)"
        return f"{self.unit} ({self.role}): {state}"


def systemd_running(root: Path) -> bool:
    return root == ROOT and Path("/run/systemd/system").is_dir()


def _ask(argv: list[str], dry_run: bool, say: Callable[[str], object]) -> str:
    """What systemctl prints (it says is-enabled/is-active in one word, whatever its exit code)."""
    if dry_run:
        say(f"would run: {shlex.join(argv)}")
        return UNKNOWN
    if shutil.which(argv[0]) is None:
        return UNKNOWN
    result = subprocess.run(argv, capture_output=True, text=True)
    words = result.stdout.split()
    return words[0] if words else UNKNOWN


def role_status(role: str, root: Path, dry_run: bool, say: Callable[[str], object] = print) -> RoleStatus:
    spec = ROLES[role]
    installed = unit_path(role, root).is_file()
    enabled: str | None = None
    active: str | None = None
    if installed:
        active = UNKNOWN
        enabled = _ask(["systemctl", f"--root={root}", "is-enabled", spec.unit], dry_run, say)
        if systemd_running(root):
            active = _ask(["systemctl", "is-active", spec.unit], dry_run, say)
    return RoleStatus(
        role=role, unit=spec.unit, unit_path=str(unit_path(role, root)), config_path=str(config_path(role, root)),
        installed=installed, config=config_path(role, root).is_file(), enabled=enabled, active=active,
    )
