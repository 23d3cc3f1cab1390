"""``andy-host demo`` without building or starting llama-server: the real command (its
flags, ``run_demo``, the coordinator and the host agent in one process), with only the
managed llama-server swapped for the fake one (``tests/harness/fakes/llamacpp.py``) serving the
demo's model. The real llama-server and model are ``tests/system/test_wheel.py``'s (e2e).

It turns the admin API on (``--admin``: a token made for the run, printed once; or
``--admin-token``) so that ``andy-host coordinator status`` works against it, and two
demos on one machine are two hosts with two ids (a state directory per address and
port), the same host again when restarted on the same port.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from andy_host.config import ENV_PREFIX
from andy_host.tools.model import DEFAULT_MODEL
from tests.harness.procs import ROOT, Proc, Processes

# The CLI's `demo`, with the managed llama-server replaced by the fake at argv[1].
DEMO = """
import sys
from pathlib import Path
from andy_host import demo
from andy_host.config import BackendConfig

fake, real_main = sys.argv[1], demo._main

async def with_the_fake_backend(config, *args, **kwargs):
    config.backend = BackendConfig(kind="llamacpp", url=fake)  # not managed: nothing to build or start
    return await real_main(config, *args, **kwargs)

demo._main = with_the_fake_backend
demo.find_llama_server = lambda *_: Path("/bin/true")
demo.ensure_model = lambda spec: Path(spec)
from andy_host.cli import main
sys.argv = ["andy-host", "demo", *sys.argv[2:]]
main()
"""


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A short directory for the state (a unix socket path holds at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="andy-demo-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env(home: Path) -> dict[str, str]:
    """A user with no ANDY_HOST_* settings; the demo's database and the host state under ``home``."""
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**clean, "ANDY_HOST_CACHE": str(home / "cache"), "XDG_STATE_HOME": str(home / "state"),
            "XDG_CONFIG_HOME": str(home / "config"), "PYTHONPATH": str(ROOT)}


def start_demo(procs: Processes, home: Path, fake: str, name: str, *args: str) -> tuple[Proc, str]:
    proc = Proc(name, [sys.executable, "-c", DEMO, fake, *args], procs.tmp / f"{name}.log")
    proc.env = env(home)
    proc.start()
    procs.all.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
        if "Serving until Ctrl-C." in text:
            return proc, text
        assert proc.popen is not None and proc.popen.poll() is None, f"the demo exited:\n{text}"
        time.sleep(0.1)
    raise TimeoutError(f"the demo did not start:\n{proc.tail()}")


def stop(proc: Proc) -> str:
    proc.signal(signal.SIGINT)
    assert proc.popen is not None and proc.popen.wait(20) == 0, proc.tail()
    return proc.log.read_text(errors="replace")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "andy_host.cli", *args], cwd=ROOT, env=env(home),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def shown(text: str, pattern: str) -> str:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return found.group(1)


def test_demo_admin_makes_a_token_and_coordinator_status_works_against_it(procs: Processes,
                                                                        short_home: Path) -> None:
    fake = procs.fake("llamacpp", "--model", DEFAULT_MODEL)
    demo, text = start_demo(procs, short_home, fake.url, "demo", "--port", "0", "--admin")
    assert "the pool answered:" in text
    command = shown(text, r"\n    (\S*andy-host coordinator status --url \S+ --admin-token andy_at_\w+)\n")
    assert text.count(command.rsplit(" ", 1)[1]) == 1  # the token, shown once
    url = shown(command, r"--url (\S+)")
    token = command.rsplit(" ", 1)[1]
    status = cli(short_home, "coordinator", "status", "--url", url, "--admin-token", token)
    assert status.returncode == 0, status.stderr
    assert f"coordinator {url} " in status.stdout and "hosts: 1 connected (1 active)" in status.stdout
    assert DEFAULT_MODEL in status.stdout
    as_json = json.loads(cli(short_home, "coordinator", "status", "--url", url, "--admin-token", token,
                             "--json").stdout)
    assert as_json["totals"]["hosts"] == 1
    wrong = cli(short_home, "coordinator", "status", "--url", url, "--admin-token", "andy_at_wrong")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    # the host's own status, where the demo says it is: a new directory for a port of 0, gone at exit
    state = Path(shown(text, r"status --state-dir (\S+)\n"))
    host = json.loads(cli(short_home, "status", "--state-dir", str(state), "--json").stdout)
    assert host["running"] is True and host["name"] == "demo-host", host
    assert state.name.startswith("andy-host-demo-") and state.is_dir()
    assert stop(demo).rstrip().endswith("stopped.")
    assert not state.exists()


def test_demo_admin_token_and_without_one_the_admin_api_is_off(procs: Processes, short_home: Path) -> None:
    fake = procs.fake("llamacpp", "--model", DEFAULT_MODEL)
    token = "andy_at_" + "t" * 30
    demo, text = start_demo(procs, short_home, fake.url, "given", "--port", "0", "--admin-token", token)
    assert token not in text  # the user's own token is not echoed
    url = shown(text, r"coordinator status --url (\S+) --admin-token TOKEN\n")
    status = cli(short_home, "coordinator", "status", "--url", url, "--admin-token", token)
    assert status.returncode == 0 and "hosts: 1 connected" in status.stdout, status.stderr
    stop(demo)
    plain, text = start_demo(procs, short_home, fake.url, "plain", "--port", "0")
    assert "Admin API: off (andy-host demo --admin turns it on" in text and "andy_at_" not in text
    url = shown(text, r"Dashboard: (\S+)/ ")
    assert httpx.get(url + "/api/andy/admin/status", timeout=5).status_code == 404  # off
    stop(plain)


def test_two_demos_on_one_machine_are_two_hosts_and_each_keeps_its_id(procs: Processes, short_home: Path) -> None:
    fake = procs.fake("llamacpp", "--model", DEFAULT_MODEL)
    token = "andy_at_" + "d" * 30
    ports = free_port(), free_port()
    first, first_text = start_demo(procs, short_home, fake.url, "first", "--port", str(ports[0]),
                                   "--admin-token", token)
    second, second_text = start_demo(procs, short_home, fake.url, "second", "--port", str(ports[1]),
                                     "--admin-token", token)
    dirs = [Path(shown(t, r"status --state-dir (\S+)\n")) for t in (first_text, second_text)]
    assert dirs[0] != dirs[1] and [d.name for d in dirs] == [f"demo-127.0.0.1-{p}" for p in ports]
    ids = [(d / "host-demo-host.id").read_text().strip() for d in dirs]
    assert ids[0] != ids[1]

    def connected(port: int) -> list[str]:
        hosts = httpx.get(f"http://127.0.0.1:{port}/api/andy/admin/hosts", timeout=5,
                          headers={"Authorization": f"Bearer {token}"}).json()["hosts"]
        return [h["host_id"] for h in hosts if h["connected"]]

    assert connected(ports[0]) == [ids[0]] and connected(ports[1]) == [ids[1]]
    stop(first)
    again, _ = start_demo(procs, short_home, fake.url, "again", "--port", str(ports[0]), "--admin-token", token)
    assert connected(ports[0]) == [ids[0]]  # the same demo again: the same host
    stop(again)
    stop(second)
