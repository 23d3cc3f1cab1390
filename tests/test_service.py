"""Running as a service: the notify protocol, reload, coordinator shutdown, install."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from andy_host.service import render_unit
from tests.procs import ROOT, Processes, wait_models
from tests.sse import chat_stream

MODEL = "m:latest"


def listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def drain_messages(sock: socket.socket, until: float) -> list[str]:
    out = []
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_notify_protocol_ready_watchdog_status_stopping(procs: Processes, tmp_path: Path) -> None:
    sock = listen(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    coordinator = procs.coordinator(env=env)
    backend = procs.fake("ollama", "--models", MODEL)
    agent_sock = listen(tmp_path / "agent.sock")
    agent = procs.agent(coordinator.url, "ollama", backend.url, "svc-host",
                        env={"NOTIFY_SOCKET": str(tmp_path / "agent.sock"), "WATCHDOG_USEC": "400000"})
    messages = drain_messages(sock, time.monotonic() + 1.0)
    coordinator.signal(signal.SIGTERM)
    assert coordinator.popen is not None and coordinator.popen.wait(15) == 0
    messages += drain_messages(sock, time.monotonic() + 0.3)
    assert messages[0].startswith("READY=1\nSTATUS=listening on http://127.0.0.1:")
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2
    assert messages[-1].startswith("STOPPING=1\nSTATUS=")
    agent_messages = drain_messages(agent_sock, time.monotonic() + 0.3)
    agent.signal(signal.SIGINT)
    assert agent.popen is not None and agent.popen.wait(10) == 0
    agent_messages += drain_messages(agent_sock, time.monotonic() + 0.3)
    ready = [m for m in agent_messages if m.startswith("READY=1")]
    assert ready and "connected to" in ready[0]
    assert any(m.startswith("STATUS=not connected") for m in agent_messages)  # the coordinator went away
    assert agent_messages[-1].startswith("STOPPING=1")


def test_reload_applies_a_valid_config_and_rejects_an_invalid_one(procs: Processes, tmp_path: Path) -> None:
    backend = procs.fake("ollama", "--models", MODEL)
    coordinator = procs.coordinator()
    config = tmp_path / "host.toml"
    config.write_text("[agent]\nmax_concurrency = 1\n")
    agent = procs.agent(coordinator.url, "ollama", backend.url, "reloader", "--config", str(config))
    wait_models(coordinator.url, {MODEL: 1})
    headers = {"Authorization": f"Bearer {coordinator.key}"}

    def capacity() -> int:
        return get_json_h(coordinator.url + "/api/andy/pool_status", headers)["hosts"][0]["capacity"]

    assert capacity() == 1
    config.write_text("[agent]\nmax_concurrency = 3\n")
    agent.signal(signal.SIGHUP)
    agent.wait_event("config.reloaded")
    deadline = time.monotonic() + 5
    while capacity() != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert capacity() == 3
    config.write_text("[agent]\nmax_concurrency = 'lots'\n")
    agent.signal(signal.SIGHUP)
    agent.wait_event("config.reload_rejected")
    time.sleep(0.3)
    assert capacity() == 3
    assert [e["event"] for e in agent.events()].count("link.connected") == 1  # never dropped
    assert chat_stream(coordinator.url, MODEL, "after reload").outcome == "complete"


def get_json_h(url: str, headers: dict[str, str]) -> dict:  # type: ignore[type-arg]
    return httpx.get(url, headers=headers, timeout=5).json()


def test_coordinator_sigterm_finishes_streams_and_tells_hosts_1012(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", MODEL, "--token-delay", "0.1")
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_SHUTDOWN_GRACE": "10"})
    agent = procs.agent(coordinator.url, "ollama", backend.url, "told")
    wait_models(coordinator.url, {MODEL: 1})
    content = "shutdown " + " ".join(f"w{i}" for i in range(15))
    seen = len(agent.events())
    with ThreadPoolExecutor(1) as ex:
        running = ex.submit(chat_stream, coordinator.url, MODEL, content)
        time.sleep(0.5)
        coordinator.signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(coordinator.url + "/health", timeout=2)  # no longer accepting
        result = running.result(timeout=20)
    assert result.outcome == "complete" and result.text == f"ollama heard: {content}"
    assert coordinator.popen is not None and coordinator.popen.wait(15) == 0
    agent.wait_event("link.down", after=seen)
    first_down = next(e for e in agent.events()[seen:] if e.get("event") == "link.down")
    assert "1012" in first_down["reason"]  # told "service restart", then it retries


def test_service_install_dry_run_and_temporary_root(tmp_path: Path) -> None:
    llama = shutil.which("llama-server") or str(Path.home() / ".cache/andy-host/llama-server/11434.0.0/bin/llama-server")
    base = [sys.executable, "-m", "andy_host.cli", "service", "install", "--coordinator", "http://pool:8080",
            "--backend", "llamacpp", "--managed", "--model", "gemma3-270m", "--name", "box", "--llama-server", llama]
    dry = subprocess.run([*base, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "would write /etc/andy-host/config.toml" in dry.stdout
    assert "would write /etc/systemd/system/andy-host.service" in dry.stdout
    assert "would run: systemctl enable --now andy-host.service" in dry.stdout
    assert not Path("/etc/systemd/system/andy-host.service").exists()
    installed = subprocess.run([*base, "--root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    config = (tmp_path / "etc/andy-host/config.toml").read_text()
    assert 'coordinator = "http://pool:8080"' in config and 'name = "box"' in config
    from andy_host.config import load_config

    loaded = load_config(tmp_path / "etc/andy-host/config.toml", env={})
    assert loaded.backend.managed and loaded.agent.name == "box"
    unit = (tmp_path / "etc/systemd/system/andy-host.service").read_text()
    assert unit == render_unit("host")
    assert "useradd --system" in installed.stdout  # printed, not run, under a temporary root
    ollama = subprocess.run([sys.executable, "-m", "andy_host.cli", "service", "install", "--coordinator", "http://p",
                             "--backend", "ollama", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if shutil.which("ollama") is None:
        assert ollama.returncode == 1 and "Ollama was not found" in ollama.stderr


def test_unit_files_are_the_rendered_units_and_pass_systemd_analyze(tmp_path: Path) -> None:
    for role, name in (("host", "andy-host.service"), ("coordinator", "andy-coordinator.service")):
        assert (ROOT / "systemd" / name).read_text() == render_unit(role)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (scripts/setup does)")
    # verify needs ExecStart to exist: render with this virtualenv as the prefix
    units = []
    for role, name in (("host", "andy-host.service"), ("coordinator", "andy-coordinator.service")):
        path = tmp_path / name
        path.write_text(render_unit(role, prefix=str(Path(sys.executable).parent.parent)))
        units.append(str(path))
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr
