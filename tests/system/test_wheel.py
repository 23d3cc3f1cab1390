"""The package without a checkout: the wheel, ``scripts/install.sh`` from it, and the demo.

A wheel is built from a copy of the package, ``install.sh --wheel`` puts it into a fresh
virtualenv (a temporary prefix, dependencies from the package index as any user gets
them) with a coordinator service under a temporary root, and ``andy-host demo`` runs
from that virtualenv in a directory outside the checkout. The demo finds llama-server
and the model in an andy-host cache that holds only links to the ones ``scripts/setup``
built and fetched (no rebuild), and answers the demo's question and the openai client's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from andy_host.tools.cache import cache_dir
from andy_host.tools.llama_build import cached_binary
from andy_host.tools.model import DEFAULT_MODEL, SMOLLM2, model_path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
QUESTION = "What is the capital of France? Answer in one word."


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user with no checkout: no virtualenv, nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ANDY_HOST_CACHE")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not p.startswith(str(ROOT)) and p != str(Path(sys.executable).parent))
    return {**env, **extra}


def build_wheel(out: Path) -> Path:
    source = out / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "andy_host", source / "andy_host", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("andy_host-*.whl")
    return wheel


@dataclass
class Installed:
    wheel: Path
    prefix: Path
    root: Path
    output: str
    work: Path  # a directory outside the checkout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(base / "dist")
    prefix, root, work = base / "prefix", base / "root", base / "work"
    work.mkdir()
    result = subprocess.run(["bash", str(INSTALL), "--wheel", str(wheel), "--prefix", str(prefix), "--root", str(root),
                             "--role", "coordinator", "--port", "9090"],
                            cwd=work, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return Installed(wheel, prefix, root, result.stdout, work)


def test_the_wheel_carries_the_build_script_the_model_fetcher_and_the_dashboard(installed: Installed) -> None:
    import zipfile

    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for member in ("andy_host/tools/llama_build.py", "andy_host/tools/model.py",
                   "andy_host/coordinator/static/dashboard.html", "andy_host/cli/service.py"):
        assert member in names
    where = subprocess.run([str(installed.prefix / "bin/python"), "-c", "import andy_host; print(andy_host.__file__)"],
                           cwd=installed.work, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(installed.prefix)), where.stdout + where.stderr


def test_install_sh_from_the_wheel_installs_a_coordinator_with_a_fresh_admin_token(installed: Installed) -> None:
    config = installed.root / "etc/andy-host/coordinator.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    settings = tomllib.loads(config.read_text())["coordinator"]
    token = settings["admin_token"]
    assert token.startswith("andy_at_") and settings["port"] == 9090
    assert installed.output.count(token) == 1  # printed once
    unit = (installed.root / "etc/systemd/system/andy-coordinator.service").read_text()
    assert f"ExecStart={installed.prefix}/bin/andy-host coordinator serve --config /etc/andy-host/coordinator.toml" in unit
    assert (installed.root / "etc/systemd/system/multi-user.target.wants/andy-coordinator.service").is_symlink()
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "apt-get install systemd (scripts/setup does)"
    verify = subprocess.run([analyze, "verify", str(installed.root / "etc/systemd/system/andy-coordinator.service")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert verify.returncode == 0, verify.stderr
    status = subprocess.run([str(installed.prefix / "bin/andy-host"), "service", "status", "--root", str(installed.root),
                             "--role", "coordinator"], cwd=installed.work, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "installed, enabled" in status.stdout, status.stdout + status.stderr


def test_install_sh_dry_run_changes_nothing(installed: Installed, tmp_path: Path) -> None:
    prefix, root = tmp_path / "opt/andy-host", tmp_path / "root"
    result = subprocess.run(["bash", str(INSTALL), "--wheel", str(installed.wheel), "--prefix", str(prefix),
                             "--root", str(root), "--dry-run", "--coordinator", "http://pool:8080",
                             "--backend", "ollama", "--backend-url", "http://ollama-box:11434"],
                            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"would run: python3 -m venv {prefix}" in result.stderr
    assert f"would run: {prefix}/bin/python -m pip install" in result.stderr
    assert f"--- would write {root}/etc/andy-host/host.toml (mode 0600) ---" in result.stdout
    assert 'coordinator = "http://pool:8080"' in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no prefix, no root, nothing


@pytest.fixture
def demo_cache(tmp_path: Path) -> Path:
    """An andy-host cache holding only links to the llama-server and model setup made."""
    binary, model = cached_binary(), model_path(DEFAULT_MODEL)
    if not binary.is_file() or not model.is_file():
        pytest.fail(f"{binary} or {model} is missing: run scripts/setup first (it builds and fetches them)")
    cache = tmp_path / "cache"
    link_dir = cache / binary.parent.parent.relative_to(cache_dir())
    link_dir.parent.mkdir(parents=True)
    link_dir.symlink_to(binary.parent.parent)
    (cache / "models").mkdir()
    for path in (model, model.with_suffix(".sha256")):
        (cache / "models" / path.name).symlink_to(path)
    assert model.name == SMOLLM2.filename
    return cache


@pytest.fixture
def demo(installed: Installed, demo_cache: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(installed.prefix / "bin/andy-host"), "demo", "--port", "0", "--threads", "2"],
                                cwd=installed.work, env=clean_env(ANDY_HOST_CACHE=str(demo_cache)),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(log: Path, proc: subprocess.Popen[bytes], text: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = log.read_text(errors="replace")
        if text in seen:
            return seen
        assert proc.poll() is None, f"the demo exited ({proc.returncode}):\n{seen}"
        time.sleep(0.2)
    raise TimeoutError(f"no {text!r} from the demo within {timeout}s:\n{log.read_text(errors='replace')}")


@pytest.mark.e2e
def test_demo_from_the_wheel_finds_the_cached_llama_server_and_model_and_answers(
    demo: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, log = demo
    output = wait_for(log, proc, "Serving until Ctrl-C.")
    assert "building it from source" not in output and "downloading" not in output
    answered = re.search(r"the pool answered: (.*)", output)
    assert answered and "paris" in answered.group(1).lower(), output
    base = re.search(r"Base URL for OpenAI clients[^:]*: (\S+)", output)
    assert base, output
    client = OpenAI(base_url=base.group(1), api_key="none", timeout=60)
    reply = client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=24, temperature=0)
    assert "paris" in (reply.choices[0].message.content or "").lower()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert log.read_text().rstrip().endswith("stopped.")
