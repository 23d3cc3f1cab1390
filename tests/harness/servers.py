"""Real Redis and PostgreSQL servers for the replicated-mode tests.

Each server runs on a free 127.0.0.1 port with its data in a temporary directory, once
per test session, and is stopped (and its directory removed) at the end. Tests get a
clean slate from the function fixtures: `redis_url` flushes the server first, and
`postgres_url` is a new, empty database. When the binaries are absent (Debian packages
`redis-server` and `postgresql`, which `scripts/setup` installs as root) the tests that
need them are skipped with the reason.

PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as the `postgres`
user (`runuser -u postgres --`) on a data directory owned by it.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14, 13)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start on port {port}; log:\n{text}")


# -- Redis ------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> str:
        """Run one command with redis-cli (FLUSHALL, INFO, ...) and return its output."""
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis() -> RedisServer:
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="andy-redis-"))
    log = workdir / "redis.log"
    for _attempt in range(5):
        port = free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--logfile", str(log), "--daemonize", "no"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port, proc, "redis-server", log)
            return RedisServer(port, workdir, proc)
        except RuntimeError:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError("redis-server did not start after 5 attempts")


# -- PostgreSQL -------------------------------------------------------------------


def postgres_bin() -> Path | None:
    for directory in PG_BIN_DIRS:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    port: int
    dir: Path
    bin: Path
    as_user: list[str]
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [*self.as_user, str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return out.stdout.strip()

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "stop", "-D", str(self.dir / "data"), "-m", "immediate", "-w"],
            capture_output=True, timeout=30, check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix to run PostgreSQL's tools, and the uid/gid to own its files."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise FileNotFoundError("running as root needs the postgres user (Debian package postgresql)") from exc
    return ["runuser", "-u", "postgres", "--"], user.pw_uid, user.pw_gid


def start_postgres(durable: bool = False) -> PostgresServer:
    """A PostgreSQL of its own. Not ``durable`` (the default, for speed): a commit is
    acknowledged before its WAL is written (``synchronous_commit=off``), so a crash loses
    the last commits. ``durable`` keeps every acknowledged commit through a crash of the
    server (not of the machine: ``fsync`` stays off), as a production server does."""
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user, uid, gid = _postgres_user()
    workdir = Path(tempfile.mkdtemp(prefix="andy-pg-"))
    if uid is not None and gid is not None:
        os.chown(workdir, uid, gid)
    data, log = workdir / "data", workdir / "postgres.log"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync", "--locale=C"],
        capture_output=True, timeout=120, check=True,
    )
    for _attempt in range(5):
        port = free_port()
        options = (f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit={'on' if durable else 'off'} -c full_page_writes=off -c max_connections=200")
        started = subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60",
             "-o", options],
            capture_output=True, timeout=90, check=False,
        )
        if started.returncode == 0:
            _wait_port(port, None, "postgres", log)
            return PostgresServer(port, workdir, bindir, as_user)
    text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"postgres did not start after 5 attempts; log:\n{text}")


# -- fixtures (imported by tests/conftest.py) -------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = start_redis()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's Redis, emptied for this test."""
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL."""
    return postgres_server.create_database()
