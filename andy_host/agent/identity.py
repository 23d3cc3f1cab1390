"""A host's stable identity, kept in its state directory across restarts."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path


def state_dir(configured: str = "") -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "andy-host"


def host_id(directory: Path, name: str) -> str:
    """The id of the host called ``name`` (several agents may share one machine)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "host"
    path = directory / f"host-{safe}.id"
    try:
        existing = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{16}", existing):
            return existing
    except OSError:
        pass
    new = uuid.uuid4().hex[:16]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    except OSError:
        pass  # read-only home: the id lasts for this run only
    return new
