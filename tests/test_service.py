"""Running as a service: the notify protocol, reload, coordinator shutdown, install."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from andy_host.coordinator.store.sqlite import SQLiteDatabase as Store
from andy_host.service.units import render_unit, unit_name
from andy_host.tools.llama_build import cached_binary
from tests.harness.procs import ROOT, Proc, Processes, get_json, until, wait_models, wait_serving
from tests.harness.sse import chat_stream

MODEL = "m:latest"


def listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def receive_until(sock: socket.socket, done: Callable[[list[str]], bool], within: float = 20) -> list[str]:
    """Datagrams as they come, until ``done(those so far)`` holds (``within``: a bound for a
    loaded machine)."""
    out: list[str] = []
    deadline = time.monotonic() + within
    while not done(out):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the notify messages {out} never held")
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def collect(sock: socket.socket, into: list[str]) -> None:
    """Append each datagram to ``into`` until the socket is closed."""
    while True:
        try:
            into.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        except OSError:  # closed
            return


def drain_messages(sock: socket.socket) -> list[str]:
    """The datagrams already sent (after the sender exited, every one it sent)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(0.2)


def test_notify_protocol_ready_watchdog_status_stopping(procs: Processes, tmp_path: Path) -> None:
    sock = listen(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    coordinator = procs.coordinator(env=env)
    backend = procs.fake("ollama", "--models", MODEL)
    agent_sock = listen(tmp_path / "agent.sock")
    agent_messages: list[str] = []  # read as they come, as systemd does: a full queue drops them
    reading = threading.Thread(target=collect, args=(agent_sock, agent_messages), daemon=True)
    reading.start()
    agent = procs.agent(coordinator.url, "ollama", backend.url, "svc-host",
                        env={"NOTIFY_SOCKET": str(tmp_path / "agent.sock"), "WATCHDOG_USEC": "400000"})
    messages = receive_until(sock, lambda seen: sum(m == "WATCHDOG=1" for m in seen) >= 2)  # every 0.2 s
    coordinator.signal(signal.SIGTERM)
    assert coordinator.popen is not None and coordinator.popen.wait(15) == 0
    messages += drain_messages(sock)
    assert messages[0].startswith("READY=1\nSTATUS=listening on http://127.0.0.1:")
    assert sum(m == "WATCHDOG=1" for m in messages) >= 2
    assert messages[-1].startswith("STOPPING=1\nSTATUS=")
    # the coordinator went away: the agent says so
    until(lambda: any(m.startswith("STATUS=not connected") for m in agent_messages), 20, "the agent's not connected")
    agent.signal(signal.SIGINT)
    assert agent.popen is not None and agent.popen.wait(10) == 0
    until(lambda: bool(agent_messages) and agent_messages[-1].startswith("STOPPING=1"), 10, "the agent's STOPPING=1")
    agent_sock.close()
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
    until(lambda: capacity() == 3, 20, "the new capacity at the coordinator")
    config.write_text("[agent]\nmax_concurrency = 'lots'\n")
    agent.signal(signal.SIGHUP)
    agent.wait_event("config.reload_rejected")  # the only word of a rejected reload is its log line
    # a reload applied would reach the coordinator at once (a heartbeat): no signal says that
    # nothing comes, so a short look for a change that must not arrive
    time.sleep(0.3)
    assert capacity() == 3
    assert agent.links() == ["up"]  # never dropped
    assert chat_stream(coordinator.url, MODEL, "after reload").outcome == "complete"


def get_json_h(url: str, headers: dict[str, str]) -> dict:  # type: ignore[type-arg]
    return httpx.get(url, headers=headers, timeout=5).json()


def test_coordinator_sigterm_finishes_streams_and_tells_hosts_1012(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", MODEL, "--token-delay", "0.1")
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_SHUTDOWN_GRACE": "10"})
    agent = procs.agent(coordinator.url, "ollama", backend.url, "told")
    wait_models(coordinator.url, {MODEL: 1})
    content = "shutdown " + " ".join(f"w{i}" for i in range(15))
    seen = len(agent.notices)
    with ThreadPoolExecutor(1) as ex:
        running = ex.submit(chat_stream, coordinator.url, MODEL, content)
        until(lambda: get_json(coordinator.url + "/health")["in_flight"] >= 1, 20, "the stream running on the host")
        coordinator.signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(coordinator.url + "/health", timeout=2)
            except httpx.ConnectError:
                return True
            return False

        until(refused, 20, "the coordinator no longer accepting")
        result = running.result(timeout=20)
    assert result.outcome == "complete" and result.text == f"ollama heard: {content}"
    assert coordinator.popen is not None and coordinator.popen.wait(15) == 0
    first_down = agent.wait_disconnected(after=seen)
    assert "1012" in first_down, first_down  # told "service restart", then it retries


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "andy_host.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_service_install_dry_run_and_temporary_root(tmp_path: Path) -> None:
    llama = shutil.which("llama-server") or str(cached_binary())
    base = ["service", "install", "--coordinator", "http://pool:8080", "--backend", "llamacpp", "--managed",
            "--model", "gemma3-270m", "--name", "box", "--llama-server", llama]
    dry = cli(*base, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "--- would write /etc/andy-host/host.toml (mode 0600) ---" in dry.stdout
    assert "would write /etc/systemd/system/andy-host.service" in dry.stdout
    assert "would run: systemctl enable --now andy-host.service" in dry.stdout
    assert not Path("/etc/systemd/system/andy-host.service").exists()
    installed = cli(*base, "--root", str(tmp_path))
    assert installed.returncode == 0, installed.stderr
    config = tmp_path / "etc/andy-host/host.toml"
    assert config.stat().st_mode & 0o777 == 0o600  # it may hold the host token
    from andy_host.config import load_config

    loaded = load_config(config, env={})
    assert loaded.backend.managed and loaded.agent.name == "box" and "http://pool:8080" in loaded.agent.coordinator
    unit = (tmp_path / "etc/systemd/system/andy-host.service").read_text()
    assert unit == render_unit("host") and "--config /etc/andy-host/host.toml" in unit
    assert "would run: useradd --system" in installed.stdout  # printed, not run, under a temporary root
    assert f"would run: chown andy-host:andy-host {config}" in installed.stdout
    assert (tmp_path / "etc/systemd/system/multi-user.target.wants/andy-host.service").is_symlink()  # systemctl --root


@pytest.mark.skipif(shutil.which("ollama") is not None, reason="the refusal needs a machine without ollama")
def test_service_install_needs_the_backend_binary_only_when_the_backend_is_local() -> None:
    host = ["service", "install", "--coordinator", "http://p:8080", "--dry-run"]
    refused = cli(*host, "--backend", "ollama")
    assert refused.returncode == 1 and "Ollama was not found" in refused.stderr and "--backend-url" in refused.stderr
    for backend_url in ("http://ollama-box:11434", "http://172.17.0.2:11434", "http://127.0.0.1:11434"):
        remote = cli(*host, "--backend", "ollama", "--backend-url", backend_url)
        assert remote.returncode == 0, remote.stderr  # in Docker, elsewhere, or started by someone else
        assert f'url = "{backend_url}"' in remote.stdout
    missing = ["--backend", "llamacpp", "--llama-server", "/nonexistent/llama-server"]
    assert cli(*host, *missing, "--backend-url", "http://[fd00::5]:8081", "--managed").returncode == 0
    local_managed = cli(*host, *missing, "--backend-url", "http://localhost:8081", "--managed")
    assert local_managed.returncode == 1 and "llama-server was not found" in local_managed.stderr


def test_service_install_says_when_the_unit_would_run_an_andy_host_that_is_not_there(tmp_path: Path) -> None:
    """`sudo andy-host service install` from a pip-installed andy-host, as the README's quick
    start goes: the unit runs <prefix>/bin/andy-host, so a prefix without it is named (a real
    install refuses it, exit 2), with the virtualenv this andy-host runs from."""
    missing = tmp_path / "no-venv"
    planned = cli("service", "install", "--role", "coordinator", "--dry-run", "--prefix", str(missing))
    assert planned.returncode == 0, planned.stderr
    venv = Path(sys.executable).parent.parent
    assert f"warning: {missing}/bin/andy-host does not exist" in planned.stderr
    assert f"--prefix {venv}" in planned.stderr and planned.stderr.count("\n") == 1
    assert f"ExecStart={missing}/bin/andy-host coordinator serve" in planned.stdout  # the plan is still shown
    here = cli("service", "install", "--role", "coordinator", "--dry-run", "--prefix", str(venv))
    assert here.returncode == 0 and "warning" not in here.stderr, here.stderr
    image = cli("service", "install", "--role", "coordinator", "--root", str(tmp_path / "img"), "--prefix",
                str(missing))
    assert image.returncode == 0 and "warning" not in image.stderr, image.stderr  # an image: made later


def test_both_roles_on_one_machine_with_their_own_config_and_an_admin_token(procs: Processes, tmp_path: Path) -> None:
    root = tmp_path / "root"
    coordinator = cli("service", "install", "--role", "coordinator", "--root", str(root), "--port", "9000")
    assert coordinator.returncode == 0, coordinator.stderr
    host = cli("service", "install", "--coordinator", "http://127.0.0.1:9000", "--backend", "ollama",
               "--backend-url", "http://gpu:11434", "--root", str(root))
    assert host.returncode == 0, host.stderr
    config = root / "etc/andy-host/coordinator.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    token = tomllib.loads(config.read_text())["coordinator"]["admin_token"]
    assert token.startswith("andy_at_") and coordinator.stdout.count(token) == 1 and token not in host.stdout
    assert sorted(p.name for p in (root / "etc/andy-host").iterdir()) == ["coordinator.toml", "host.toml"]
    for role in ("host", "coordinator"):
        assert (root / "etc/systemd/system" / unit_name(role)).read_text() == render_unit(role)
    again = cli("service", "install", "--role", "coordinator", "--root", str(root), "--port", "9000")
    assert again.returncode == 0 and token not in again.stdout and "kept the admin token" in again.stdout
    assert tomllib.loads(config.read_text())["coordinator"]["admin_token"] == token
    # the coordinator reads that config, and its admin API takes that token
    db = tmp_path / "pool.db"
    Store(str(db)).close()
    serve = Proc("installed", [sys.executable, "-m", "andy_host.cli", "coordinator", "serve", "--config", str(config),
                               "--host", "127.0.0.1", "--port", "0", "--db", str(db), "--log-format", "json"],
                 tmp_path / "installed.log").start()
    procs.all.append(serve)
    url = wait_serving(serve)
    assert httpx.get(f"{url}/api/andy/admin/keys", timeout=5).status_code == 401
    assert httpx.get(f"{url}/api/andy/admin/keys", headers={"Authorization": f"Bearer {token}"},
                     timeout=5).status_code == 200


def test_the_coordinator_service_listens_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    """nginx in front (docs/tls.md): by default the installed coordinator is reachable
    from this machine only, believes X-Forwarded-For from there, and the summary says so."""
    plan = cli("service", "install", "--role", "coordinator", "--dry-run", "--prefix", str(tmp_path))
    shown = tomllib.loads(plan.stdout.split("(mode 0600) ---\n", 1)[1].split("\nwould run:", 1)[0])
    assert (shown["coordinator"]["host"], shown["coordinator"]["trusted_proxies"]) == ("127.0.0.1", ["127.0.0.1"])
    root = tmp_path / "root"
    local = cli("service", "install", "--role", "coordinator", "--root", str(root), "--port", "9000")
    assert local.returncode == 0, local.stderr
    written = tomllib.loads((root / "etc/andy-host/coordinator.toml").read_text())["coordinator"]
    assert (written["host"], written["port"], written["trusted_proxies"]) == ("127.0.0.1", 9000, ["127.0.0.1"])
    assert "the coordinator listens on http://127.0.0.1:9000, loopback only: put nginx in front" in local.stdout
    assert "--host 0.0.0.0" in local.stdout
    every = cli("service", "install", "--role", "coordinator", "--root", str(root), "--host", "0.0.0.0")
    assert every.returncode == 0, every.stderr
    written = tomllib.loads((root / "etc/andy-host/coordinator.toml").read_text())["coordinator"]
    assert written["host"] == "0.0.0.0" and "trusted_proxies" not in written  # no proxy claimed
    assert "the coordinator listens on every address, port 8080, in plain HTTP" in every.stdout


def test_service_status_and_uninstall_keep_or_purge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    state = root / "var/lib/andy-host"
    for args in (("--role", "coordinator"), ("--coordinator", "http://p:8080", "--backend-url", "http://gpu:11434")):
        assert cli("service", "install", *args, "--root", str(root)).returncode == 0
    state.mkdir(parents=True)
    (state / "pool.db").write_text("db")
    (state / "host-box.id").write_text("0123456789abcdef\n")
    status = cli("service", "status", "--root", str(root), "--json")
    assert status.returncode == 0, status.stderr
    assert {(s["role"], s["installed"], s["enabled"], s["active"]) for s in json.loads(status.stdout)} == {
        ("host", True, "enabled", "unknown"), ("coordinator", True, "enabled", "unknown")}
    before = sorted(str(p) for p in root.rglob("*"))
    dry = cli("service", "uninstall", "--role", "coordinator", "--purge", "--root", str(root), "--dry-run")
    assert dry.returncode == 0 and f"would remove {state / 'pool.db'}" in dry.stdout
    assert sorted(str(p) for p in root.rglob("*")) == before  # --dry-run changed nothing
    kept = cli("service", "uninstall", "--role", "coordinator", "--root", str(root))
    assert kept.returncode == 0 and "kept /etc/andy-host/coordinator.toml" in kept.stdout
    assert not (root / "etc/systemd/system/andy-coordinator.service").exists()
    assert (root / "etc/andy-host/coordinator.toml").exists() and (state / "pool.db").exists()
    text = cli("service", "status", "--root", str(root)).stdout
    assert "andy-coordinator.service (coordinator): not installed (its config" in text
    assert "andy-host.service (host): installed, enabled" in text
    purged = cli("service", "uninstall", "--role", "coordinator", "--purge", "--root", str(root))
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/andy-host/coordinator.toml").exists() and not (state / "pool.db").exists()
    assert (state / "host-box.id").exists() and (root / "etc/andy-host/host.toml").exists()  # the host's stay
    last = cli("service", "uninstall", "--purge", "--root", str(root))
    assert last.returncode == 0 and "would run: userdel andy-host" in last.stdout
    assert not state.exists() and not (root / "etc/andy-host").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/andy-host.service").exists()
    assert not any(s["installed"] for s in json.loads(cli("service", "status", "--root", str(root), "--json").stdout))


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


@pytest.mark.timeout(30)
def test_a_notify_socket_nobody_reads_never_blocks_the_sender(tmp_path: Path) -> None:
    """systemd behind (or a socket nobody reads): the queue fills (10 datagrams by
    default) and the rest are dropped, where a blocking send would freeze the agent's or
    the coordinator's event loop (it did, under load, in the notify test above)."""
    from andy_host.service.notify import Notifier

    sock = listen(tmp_path / "full.sock")
    try:
        notifier = Notifier(str(tmp_path / "full.sock"))
        for _ in range(200):  # far more than any queue holds: returns, never waits
            notifier.send("WATCHDOG=1")
        assert drain_messages(sock)[:1] == ["WATCHDOG=1"]  # the first ones arrived
    finally:
        sock.close()
