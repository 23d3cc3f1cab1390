"""Real processes on 127.0.0.1 for the tests: fakes, coordinators, host agents.

Every process logs to a file under the test's tmp dir; helpers wait for log events
(JSON lines) with a bound, and every process is killed at teardown.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from andy_host.coordinator.store.sqlite import SQLiteDatabase as Store

ROOT = Path(__file__).resolve().parents[2]

FAST_ENV = {
    "ANDY_HOST_COORDINATOR_HEARTBEAT_INTERVAL": "0.5",
    "ANDY_HOST_COORDINATOR_HOST_TIMEOUT": "3",
    "ANDY_HOST_COORDINATOR_QUEUE_TIMEOUT": "2",
    "ANDY_HOST_COORDINATOR_TTFT_TIMEOUT": "20",
    "ANDY_HOST_AGENT_RECONNECT_MIN": "0.1",
    "ANDY_HOST_AGENT_RECONNECT_MAX": "0.5",
    "ANDY_HOST_AGENT_HEARTBEAT_INTERVAL": "1",
    "ANDY_HOST_BACKEND_POLL_INTERVAL": "1",
    "ANDY_HOST_BACKEND_RESTART_BACKOFF_MIN": "0.2",
    "ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "1000000",
    "ANDY_HOST_COORDINATOR_NEW_HOSTS_PER_HOUR": "1000000",  # every test's hosts come from 127.0.0.1
    "ANDY_HOST_COORDINATOR_METRICS_CACHE_SECONDS": "0",  # tests compare scrapes before and after traffic
}


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    url: str = ""
    key: str = ""  # an API key of this coordinator (generous limits)

    def start(self, capture_stdout: bool = False) -> Proc:
        env = {**os.environ, **FAST_ENV, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE if capture_stdout else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
        return self

    def read_port(self, timeout: float = 20) -> int:
        assert self.popen is not None and self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.popen.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.popen.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode().splitlines():
                    if line.startswith("PORT "):
                        return int(line.split()[1])
        raise TimeoutError(f"{self.name} printed no port; log:\n{self.tail()}")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def wait_event(self, name: str, timeout: float = 20, after: int = 0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                e for e in self.events()[after:]
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
            ]
            if found:
                return found[-1]
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); log:\n{self.tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: no {name} event within {timeout}s; log:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


class Processes:
    """Starts processes and remembers them, so a fixture can stop them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.all: list[Proc] = []

    def fake(self, kind: str, *args: str, name: str | None = None) -> Proc:
        name = name or f"fake-{kind}-{len(self.all)}"
        proc = Proc(name, [sys.executable, "-m", f"tests.harness.fakes.{kind}", "--port", "0", *args], self.tmp / f"{name}.log")
        proc.start(capture_stdout=True)
        self.all.append(proc)
        proc.url = f"http://127.0.0.1:{proc.read_port()}"
        return proc

    def coordinator(self, port: int = 0, env: dict[str, str] | None = None, name: str = "coordinator",
                    db: Path | None = None) -> Proc:
        db = db or self.tmp / "coordinator.db"
        args = [
            sys.executable, "-m", "andy_host.cli", "coordinator", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--db", str(db), "--log-format", "json",
        ]
        store = Store(str(db))
        key, _ = store.create_key("tests", daily_limit=10**9, per_minute=10**9)
        store.close()
        proc = Proc(name, args, self.tmp / f"{name}.log", env=env or {}).start()
        proc.key = key
        self.all.append(proc)
        before = len(proc.events()) if proc.log.exists() else 0
        proc.url = proc.wait_event("coordinator.listening", after=before)["url"]
        return proc

    def agent(
        self,
        coordinator: str,
        backend: str,
        backend_url: str | None,
        name: str,
        *extra: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 20,
    ) -> Proc:
        args = [
            sys.executable, "-m", "andy_host.cli", "join", "--coordinator", coordinator,
            "--backend", backend, "--name", name, "--state-dir", str(self.tmp / "state"),
            "--log-format", "json", *extra,
        ]
        if backend_url:
            args += ["--backend-url", backend_url]
        proc = Proc(name, args, self.tmp / f"{name}.log", env=env or {}).start()
        self.all.append(proc)
        if wait:
            proc.wait_event("link.connected", timeout=timeout)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.all):
            proc.stop(timeout=5)


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_models(base: str, expected: dict[str, int], timeout: float = 15) -> dict[str, int]:
    """Poll /api/andy/models until each named model has the given number of hosts."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        seen = {m["name"]: m["hosts"] for m in get_json(base + "/api/andy/models")["models"]}
        if all(seen.get(k, 0) == v for k, v in expected.items()):
            return seen
        time.sleep(0.05)
    raise TimeoutError(f"models {seen} never matched {expected}")
