"""Where downloaded and built artefacts are cached (``ANDY_HOST_CACHE`` overrides)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    override = os.environ.get("ANDY_HOST_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "andy-host"
