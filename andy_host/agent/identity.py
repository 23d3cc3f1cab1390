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
    save_host_id(directory, name, new)
    return new


def save_host_id(directory: Path, name: str, value: str) -> None:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "host"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"host-{safe}.id").write_text(value + "\n")
    except OSError:
        pass  # read-only home: the id lasts for this run only


def _secret_path(directory: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "host"
    return directory / f"host-{safe}.secret"


def host_secret(directory: Path, name: str) -> str | None:
    """The secret the coordinator issued to this host (open enrolment), if any."""
    try:
        secret = _secret_path(directory, name).read_text().strip()
    except OSError:
        return None
    return secret if re.fullmatch(r"andy_hs_[a-z0-9]{38}", secret) else None


def save_host_secret(directory: Path, name: str, secret: str) -> None:
    """Keep the issued secret (readable by this user only); it proves the host id later."""
    path = _secret_path(directory, name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
    except OSError:
        pass  # read-only state dir: the secret lasts for this run only
