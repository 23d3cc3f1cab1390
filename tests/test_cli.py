"""The CLI as a user meets it, run as a subprocess: --version and -h everywhere, help that
shows flags as flags with each config option's default and environment name (and those
names work), join's missing coordinator and first failed connect, a port in use, the
coordinator's start-up summary, and ``status`` (always JSON with --json; ``idle`` when
the owner's controls withhold every model)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from andy_host import __version__
from andy_host.cli import LAYOUTS
from andy_host.cli.helptext import default_of, env_name
from andy_host.config import ENV_PREFIX, SECTIONS
from tests.harness.procs import ROOT, Proc, Processes, wait_models, wait_serving

MODEL = "m:latest"
REAL = [((), "-h"), (("join",), "-h"), (("coordinator", "keys"), "-h"), (("status",), "--help")]
ENV_SHOWN = re.compile(r"\[env\s+var:\s+([A-Z0-9_]+)\]")


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no config file and no ANDY_HOST_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**env, "XDG_CONFIG_HOME": str(tmp / "xdg"), "PYTHONPATH": str(ROOT), **extra}


def cli(tmp: Path, *args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "andy_host.cli", *args], cwd=ROOT, env=clean_env(tmp, **env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Prints every command's -h in one process (26 interpreters would take half a minute on a
# busy 2-core machine); a test checks that it is what the real command prints.
ALL_HELP = """
import contextlib, io, json
from andy_host.cli import command

def paths(cmd, path=()):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from paths(sub, (*path, name))

root, out = command(), {}
for path in paths(root):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = root.main([*path, "-h"], prog_name="andy-host", standalone_mode=False)
    out[" ".join(path)] = {"code": code, "text": buf.getvalue()}
print(json.dumps(out))
"""


def all_help(tmp: Path) -> dict[tuple[str, ...], str]:
    result = subprocess.run([sys.executable, "-c", ALL_HELP], cwd=ROOT, env=clean_env(tmp), capture_output=True,
                            text=True, timeout=60, check=True)
    helps = json.loads(result.stdout)
    assert all(h["code"] in (0, None) for h in helps.values()), helps
    return {tuple(path.split()): h["text"] for path, h in helps.items()}


def test_version_flag_and_command(tmp_path: Path) -> None:
    flag = cli(tmp_path, "--version")
    assert flag.returncode == 0 and flag.stdout.strip() == f"andy-host {__version__}"
    assert cli(tmp_path, "version").stdout.strip() == __version__


def test_h_on_every_command_shows_flags_defaults_and_env_names(tmp_path: Path) -> None:
    helps = all_help(tmp_path)
    assert len(helps) > 15  # groups and commands, from the real tree
    with ThreadPoolExecutor(4) as pool:  # the real command prints the same, -h or --help
        real = dict(zip(REAL, pool.map(lambda p: cli(tmp_path, *p[0], p[1]), REAL), strict=True))
    for (path, _), result in real.items():
        assert result.returncode == 0 and result.stdout == helps[path], path
    valid = {env_name(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    valid.add(ENV_PREFIX + "CONFIG")
    for path, text in helps.items():
        where = " ".join(path) or "(root)"
        assert text.startswith(f"Usage: andy-host {' '.join(path)}".rstrip()), where
        assert "<bool>" not in text, f"{where}: a flag shown as taking a value"
        assert "-h, --help" in text, where
        shown = set(ENV_SHOWN.findall(text))
        assert shown <= valid, f"{where} shows environment names config.py does not read: {shown - valid}"
    for name, layout in LAYOUTS.items():
        text = helps[tuple(name.split())]
        for section, options in layout.items():
            for option in options:
                assert env_name(section, option) in text, f"{name} -h lacks {env_name(section, option)}"
    def flat(*path: str) -> str:  # the help text with its wrapping undone
        return " ".join(helps[path].split())

    assert f"[default: {default_of('coordinator', 'port')}]" in flat("coordinator", "serve")
    assert "--json Print JSON" in flat("status")  # a flag: no value after it
    assert "--managed / --no-managed Start" in flat("join")
    assert "[default: 2] [env var: ANDY_HOST_AGENT_MAX_CONCURRENCY]" in flat("join")


def test_join_needs_a_coordinator_and_says_what_to_check_when_it_is_not_there(tmp_path: Path) -> None:
    missing = cli(tmp_path, "join", "--backend", "ollama")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert "--coordinator" in missing.stderr and "ANDY_HOST_AGENT_COORDINATOR" in missing.stderr
    # the environment name --help shows is the one join reads
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "andy_host.cli", "join", "--backend", "ollama", "--backend-url",
            f"http://127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "state"), "--log-format", "json"]
    agent = Proc("nowhere", args, tmp_path / "nowhere.log",
                 env=clean_env(tmp_path, ANDY_HOST_AGENT_COORDINATOR=url)).start()
    try:
        first = agent.wait_event("link.down", timeout=20)
        again = agent.wait_event("link.down", after=agent.events().index(first) + 1, timeout=20)
    finally:
        agent.kill()
    assert first["reason"] == f"nothing listens at 127.0.0.1:{port} (connection refused)"
    assert f"Is the coordinator running at {url}" in first["hint"]
    assert f"curl {url}/health" in first["hint"]
    assert "hint" not in again  # once per outage, not at every retry
    assert "Connect call failed" not in json.dumps([first, again])  # aiohttp's raw words


def test_a_bad_flag_or_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """As the README promises: a usage error is one line on stderr naming the command and
    what to read, not click's three-line usage block."""
    cases = [(("demo", "--ctx-size", "abc"), "Invalid value for '--ctx-size'"),
             (("coordinator", "serve", "--port", "eighty"), "Invalid value for '--port'"),
             (("join", "--bogus"), "No such option: --bogus"),
             (("nosuch",), "No such command 'nosuch'")]
    for args, words in cases:
        result = cli(tmp_path, *args)
        assert result.returncode == 2, (args, result)
        assert result.stderr.strip().count("\n") == 0 and words in result.stderr, result.stderr
        assert result.stderr.startswith("andy-host") and "-h shows the options" in result.stderr


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(tmp_path, "coordinator", "serve", "--port", str(port), "--db", str(tmp_path / "c.db"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr


def serve(tmp: Path, name: str, *args: str, last: str = r"^  database ", **env: str) -> tuple[Proc, list[str]]:
    """A coordinator, ready (it printed where it listens and /health answers); the lines it
    prints on stdout (the live list: complete once it printed ``last``, or once stopped)."""
    argv = [sys.executable, "-m", "andy_host.cli", "coordinator", "serve", "--log-format", "json", *args]
    proc = Proc(name, argv, tmp / f"{name}.log", env=clean_env(tmp, **env)).start()
    proc.url = wait_serving(proc)
    proc.wait_line(last)
    return proc, proc.stdout


def test_serve_prints_a_start_up_summary(tmp_path: Path) -> None:
    port = free_port()
    token = "admin-" + "x" * 24
    memory, lines = serve(tmp_path, "memory", last=r"^  WARNING: the database is in memory",
                          ANDY_HOST_COORDINATOR_PORT=str(port),
                          ANDY_HOST_COORDINATOR_ADMIN_TOKEN=token, ANDY_HOST_COORDINATOR_ENROLMENT="token")
    try:
        url = f"http://127.0.0.1:{port}"  # the port from the environment name --help shows
        text = "\n".join(lines)
        assert lines[0] == f"andy-host coordinator {__version__} listening on {url}"
        assert f"OpenAI API   {url}/api/andy/v1 " in text
        assert f"dashboard    {url}/\n" in text and f"metrics      {url}/metrics\n" in text
        assert f"admin API    on at {url}/api/andy/admin/" in text
        assert "enrolment    token: hosts need a token" in text
        assert "database     in memory" in text and "WARNING: the database is in memory" in text
        assert memory.wait_event("coordinator.database_in_memory")
        # each URL it names answers
        assert httpx.get(url + "/").status_code == 200
        assert httpx.get(url + "/metrics").text.startswith("#")
        assert httpx.get(url + "/api/andy/v1/models").status_code == 401  # the API, asking for a key
        admin = httpx.get(url + "/api/andy/admin/keys", headers={"Authorization": f"Bearer {token}"})
        assert admin.status_code == 200
    finally:
        memory.stop()
    db = tmp_path / "pool.db"
    stored, lines = serve(tmp_path, "stored", "--port", "0", "--db", str(db),
                          ANDY_HOST_COORDINATOR_METRICS_ACCESS="off")
    stored.stop()
    text = "\n".join(lines)
    assert f"database     SQLite {db}" in text and "WARNING" not in text
    assert "admin API    off (set coordinator.admin_token" in text
    assert "enrolment    open: any host may join" in text and "metrics      off" in text


def status(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(tmp, "status", "--state-dir", str(tmp / "state"), *args)


def test_status_json_without_a_daemon_is_json(tmp_path: Path) -> None:
    result = status(tmp_path, "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["running"] is False and data["socket"].endswith(".sock")
    text = status(tmp_path)
    assert text.returncode == 1 and text.stdout.startswith("andy-host is not running")


def test_status_shows_idle_when_a_reload_withholds_every_model(procs: Processes, tmp_path: Path) -> None:
    backend = procs.fake("ollama", "--models", MODEL)
    coordinator = procs.coordinator()
    config = tmp_path / "host.toml"
    config.write_text("[controls]\nshare_models = ['m*']\n")
    agent = procs.agent(coordinator.url, "ollama", backend.url, "owner", "--config", str(config))
    wait_models(coordinator.url, {MODEL: 1})
    before = json.loads(status(procs.tmp, "--name", "owner", "--json").stdout)
    assert before["running"] is True and before["status"] == "active" and before["backend"]["models"] == [MODEL]
    config.write_text("[controls]\ndeny_models = ['m*']\n")
    seen = len(agent.events())
    agent.signal(signal.SIGHUP)
    agent.wait_event("config.reloaded", after=seen)
    wait_models(coordinator.url, {MODEL: 0})
    shown = status(procs.tmp, "--name", "owner")
    assert shown.returncode == 0
    assert "status: idle (no models shared: 1 withheld by share_models/deny_models" in shown.stdout
    assert "status: active" not in shown.stdout and "models shared: none" in shown.stdout
    after = json.loads(status(procs.tmp, "--name", "owner", "--json").stdout)
    assert after["status"] == "idle" and after["withheld_models"] == [MODEL]
    headers = {"Authorization": f"Bearer {coordinator.key}"}
    deadline = time.monotonic() + 5
    pool: dict[str, Any] = {}
    while time.monotonic() < deadline:  # the coordinator shows it the same way
        pool = httpx.get(coordinator.url + "/api/andy/pool_status", headers=headers).json()
        if pool["hosts"] and pool["hosts"][0]["status"] == "idle":
            break
        time.sleep(0.05)
    assert pool["hosts"][0]["status"] == "idle", pool["hosts"]


def test_a_bad_environment_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = cli(tmp_path, "coordinator", "serve", ANDY_HOST_COORDINATOR_PORT="eighty")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "coordinator.port (from environment): 'eighty' is not a valid int" in result.stderr


def test_coordinator_status_says_which_figures_are_this_replicas(capsys: Any) -> None:
    """Through a load balancer, a replica without hosts answered "2 connected (none)" and
    "models: none served now" next to the pool's 4 slots: the pool's totals and the
    answering replica's breakdown are now told apart."""
    from andy_host.cli.live import _print

    status = {"version": __version__, "enrolment": "open",
              "totals": {"hosts": 2, "serving_hosts": 2, "capacity": 4, "in_flight": 0, "queued": 0,
                         "replicas": 2},
              "hosts": {"active": 0, "busy": 0}, "models": [],
              "rates": {"window_seconds": 4.0, "requests_per_s": 0.0, "tokens_per_s": 0.0, "errors_per_s": 0.0}}
    _print(status, "http://lb")
    shown = capsys.readouterr().out
    assert "hosts: 2 connected in the pool of 2 replicas (none on this replica); 2 serving, 4 slots" in shown
    assert "models: none served on this replica" in shown
    del status["totals"]["replicas"]  # one process: as before
    _print(status, "http://one")
    shown = capsys.readouterr().out
    assert "hosts: 2 connected (none); " in shown and "models: none served now" in shown


def test_the_summary_of_a_replica_on_every_address() -> None:
    """Pure: a replica listening on 0.0.0.0 tells hosts a name they can reach, and says
    where it shares state (never the password in the URL)."""
    import socket

    from andy_host.config import CoordinatorConfig
    from andy_host.coordinator.runtime import startup
    config = CoordinatorConfig(host="0.0.0.0", redis_url="redis://:hunter2@cache.example:6380/2",
                               replica_secret="s" * 20, replica_id="a",
                               database_url="postgresql://andy:hunter2@db.example:5432/andy")
    text = startup.render(startup.facts(config, "http://0.0.0.0:8080"))
    assert f"andy-host join --coordinator http://{socket.gethostname()}:8080" in text
    assert "replicated   Redis at cache.example:6380/2, as replica a" in text
    assert "database     PostgreSQL at db.example/andy" in text and "hunter2" not in text
