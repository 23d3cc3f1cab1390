"""Real processes on 127.0.0.1 for the tests: fakes, coordinators, host agents.

Every process logs to a file under the test's tmp dir, and every process is killed at
teardown. A process is ready when it says so itself: a fake prints ``PORT n``, a
coordinator prints ``listening on URL`` and then answers ``/health``, an agent sends
READY=1 (systemd's notify protocol) once its link is up. The log's JSON lines
(:meth:`Proc.events`) are for asserting what happened, after the fact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
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
    """One started process. Its stdout is read as it comes (and copied into its log);
    an agent's link states arrive on a notify socket of its own (systemd's protocol, the
    one a service manager reads). Readiness comes from those, never from the log file,
    which is kept for what a test asserts about after the fact (:meth:`events`)."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    url: str = ""
    key: str = ""  # an API key of this coordinator (generous limits)
    host_id: str = ""  # an agent's, as the coordinator welcomed it when it became ready
    stdout: list[str] = field(default_factory=list)  # the lines it printed so far
    notices: list[str] = field(default_factory=list)  # the notify datagrams it sent so far
    _seen: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _readers: list[threading.Thread] = field(default_factory=list, repr=False)
    _notify: socket.socket | None = field(default=None, repr=False)
    _eof: bool = False

    def start(self, notify: bool = False) -> Proc:
        """Start it; with ``notify``, listen for its READY=1/STATUS= datagrams (unless the
        test gave it a ``NOTIFY_SOCKET`` of its own)."""
        env = {**os.environ, **FAST_ENV, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if notify and "NOTIFY_SOCKET" not in self.env:
            name = f"andy-host-tests-{os.getpid()}-{uuid.uuid4().hex}"  # abstract: no path to outlive it
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._notify.bind("\0" + name)
            env["NOTIFY_SOCKET"] = "@" + name
            self._reader(self._read_notices)
        elif "NOTIFY_SOCKET" not in self.env:
            env.pop("NOTIFY_SOCKET", None)  # not the one pytest itself may run under
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL,
            )
        self._reader(self._read_stdout)
        return self

    def _reader(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"{self.name}-{target.__name__}", daemon=True)
        thread.start()
        self._readers.append(thread)

    def _read_stdout(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        pipe, partial = self.popen.stdout, b""
        with self.log.open("ab") as out:
            while chunk := os.read(pipe.fileno(), 65536):
                out.write(chunk)
                out.flush()
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                with self._seen:
                    self.stdout.extend(line.decode(errors="replace") for line in lines)
                    self._seen.notify_all()
        with self._seen:
            if partial:
                self.stdout.append(partial.decode(errors="replace"))
            self._eof = True
            self._seen.notify_all()

    def _read_notices(self) -> None:
        assert self._notify is not None
        while True:
            try:
                data = self._notify.recv(65536)
            except OSError:  # closed at stop
                return
            if not data:  # shut down at stop
                return
            with self._seen:
                self.notices.append(data.decode(errors="replace"))
                self._seen.notify_all()

    def _wait(self, found: Callable[[], Any], what: str, timeout: float, every: float = 0.5) -> Any:
        """Wake at each line or datagram (and every ``every`` s) until ``found()`` is
        truthy (its value), the process ends, or ``timeout``."""
        deadline, exited = time.monotonic() + timeout, None
        with self._seen:
            while not (hit := found()):
                now = time.monotonic()
                if self.popen is not None and self.popen.poll() is not None:
                    exited = exited or now
                    if self._eof or now - exited > 1:  # its last lines read (or a child holds the pipe)
                        raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before {what}; "
                                           f"log:\n{self.tail()}")
                if now >= deadline:
                    raise TimeoutError(f"{self.name}: no {what} within {timeout}s; log:\n{self.tail()}")
                self._seen.wait(min(deadline - now, every))
            return hit

    def wait_line(self, pattern: str, timeout: float = 20, after: int = 0) -> re.Match[str]:
        """The first line on stdout (from line ``after``) that ``pattern`` matches."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            return next((m for line in self.stdout[after:] if (m := regex.search(line))), None)

        match: re.Match[str] = self._wait(found, f"stdout line matching {pattern!r}", timeout)
        return match

    def read_port(self, timeout: float = 20) -> int:
        """The port a fake prints as ``PORT n`` once it listens."""
        return int(self.wait_line(r"^PORT (\d+)$", timeout).group(1))

    def wait_notice(self, prefix: str, timeout: float = 20, after: int = 0) -> str:
        """The first notify datagram (from number ``after``) with a line that starts with
        ``prefix`` (e.g. ``READY=1``, ``STATUS=connected``); that line."""
        if self._notify is None:
            raise RuntimeError(f"{self.name} was started without a notify socket of the harness")

        def found() -> str | None:
            return next((line for notice in self.notices[after:] for line in notice.splitlines()
                         if line.startswith(prefix)), None)

        line: str = self._wait(found, f"notice {prefix!r}", timeout)
        return line

    def wait_connected(self, timeout: float = 20, after: int = 0) -> str:
        """An agent's link is up (its ``connected to URL as ID`` status, from notice
        number ``after``): the host id the coordinator welcomed it with."""
        line = self.wait_notice("STATUS=connected to ", timeout, after)
        return line.rsplit(" as ", 1)[1]

    def statuses(self) -> list[str]:
        """Every ``STATUS=`` it sent so far, oldest first (an agent: each link state)."""
        with self._seen:
            return [line.removeprefix("STATUS=") for notice in self.notices for line in notice.splitlines()
                    if line.startswith("STATUS=")]

    def links(self) -> list[str]:
        """An agent's link states so far: ``up`` for each connection, ``down`` for each loss."""
        return ["up" if s.startswith("connected") else "down" for s in self.statuses()
                if s.startswith(("connected", "not connected"))]

    def wait_disconnected(self, timeout: float = 20, after: int = 0) -> str:
        """An agent's link went down (``not connected (REASON); retrying``): that status."""
        return self.wait_notice("STATUS=not connected", timeout, after).removeprefix("STATUS=")

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
        self._close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._close()

    def _close(self) -> None:
        """After the exit: the rest of its stdout into the log, the notify socket shut."""
        if self._notify is not None and self._notify.fileno() != -1:  # not twice (kill, then stop)
            self._notify.shutdown(socket.SHUT_RDWR)
            self._notify.close()
        for thread in self._readers:
            thread.join(2)  # a child that kept the pipe open (llama-server) may hold EOF back
        if self.popen is not None and self.popen.stdout is not None and not any(t.is_alive() for t in self._readers):
            self.popen.stdout.close()


class Processes:
    """Starts processes and remembers them, so a fixture can stop them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.all: list[Proc] = []

    def fake(self, kind: str, *args: str, name: str | None = None) -> Proc:
        name = name or f"fake-{kind}-{len(self.all)}"
        proc = Proc(name, [sys.executable, "-m", f"tests.harness.fakes.{kind}", "--port", "0", *args], self.tmp / f"{name}.log")
        proc.start()
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
        proc.url = wait_serving(proc)
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
        proc = Proc(name, args, self.tmp / f"{name}.log", env=env or {}).start(notify=True)
        self.all.append(proc)
        if wait:
            wait_joined(proc, timeout)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.all):
            proc.stop(timeout=5)


LISTENING = r"^andy-host coordinator \S+ listening on (http://\S+)"  # the summary's first line


def wait_serving(proc: Proc, timeout: float = 20) -> str:
    """A coordinator is ready when it printed where it listens and that URL's /health
    answers ``ok``: its URL."""
    url = proc.wait_line(LISTENING, timeout).group(1)
    health = get_json(url + "/health")
    assert health["status"] == "ok", health
    return url


def wait_joined(proc: Proc, timeout: float = 20) -> str:
    """An agent is ready when its link is up: READY=1 on its notify socket, or, where the
    test holds that socket, ``connected: true`` on its status socket. Its host id."""
    if proc._notify is not None:
        proc.wait_notice("READY=1", timeout)
        proc.host_id = proc.wait_connected(timeout)
        return proc.host_id
    state = re.sub(r"[^A-Za-z0-9_.-]", "_", proc.name)
    status_socket = Path(proc.args[proc.args.index("--state-dir") + 1]) / f"status-{state}.sock"

    def connected() -> str | None:
        try:
            status = unix_get_json(status_socket, "/status")
        except (OSError, ValueError):
            return None
        return str(status["host_id"]) if status.get("connected") else None

    proc.host_id = proc._wait(connected, "a connected link on its status socket", timeout, every=0.05)
    return proc.host_id


def unix_get_json(path: Path, target: str, timeout: float = 2) -> Any:
    """GET ``target`` from an HTTP server on the unix socket ``path`` (an agent's status)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: daemon\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head[:80])
    return json.loads(body)


def until(condition: Callable[[], Any], within: float = 10, what: str = "condition", every: float = 0.05) -> Any:
    """Poll ``condition()`` until it is truthy (its value); fails after ``within`` seconds,
    a bound for a loaded machine, never a measure of speed."""
    deadline = time.monotonic() + within
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {within}s")
        time.sleep(every)
    return value


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
