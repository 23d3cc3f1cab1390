"""What ``service install`` and ``service uninstall`` do, as a list of steps run in order.

A plan is data: files to write (with their mode), paths to remove and commands to run.
``--dry-run`` prints every step and changes nothing. A ``--root`` other than ``/``
writes and removes files under that root and runs only the commands that change
nothing but files there (``systemctl --root=... enable``); the rest are printed.

Install: the service user first, then the role's config (mode 0600, owned by that
user: it holds the host token or the admin token), the unit, ``daemon-reload`` and
``enable --now``. The coordinator role gets a fresh ``coordinator.admin_token``, printed
once at the end; a reinstall keeps the one its config already has. It listens on
loopback unless ``--host`` says otherwise (nginx in front, docs/tls.md), believing
X-Forwarded-For from there; the summary says where it listens.

Uninstall: ``disable --now``, remove the unit, ``daemon-reload``. Config and data stay
unless ``--purge``: then the role's config and its own data go, and the shared
directories and the user too when the other role is not installed.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from andy_host.coordinator.access.credentials import new_secret
from andy_host.errors import InstallError
from andy_host.service.units import CACHE_DIR, ROLES, STATE_DIR, config_path, render_unit, under, unit_path

ADMIN_TOKEN_PREFIX = "andy_at_"
TOKEN_PLACEHOLDER = "<generated at install, printed once>"
KEPT_PLACEHOLDER = "<the admin token this file has now, kept>"
ROOT = Path("/")


@dataclass(frozen=True, slots=True)
class Write:
    path: Path
    text: str
    mode: int = 0o644
    shown: str | None = None  # what --dry-run prints instead of the text (it holds a secret)


@dataclass(frozen=True, slots=True)
class Remove:
    path: Path


@dataclass(frozen=True, slots=True)
class Run:
    argv: list[str]
    offline: bool = False  # changes only files under --root, so it runs under a temporary root too


Step = Write | Remove | Run


@dataclass(slots=True)
class Plan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed after a real run, never by --dry-run


def user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def is_local_url(url: str) -> bool:
    """The URL names this machine (loopback, an unspecified address, or localhost)."""
    hostname = (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower()
    if hostname in ("", "localhost") or hostname.endswith(".localhost"):
        return True
    try:
        address = ip_address(hostname)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def needs_local_backend(backend_url: str | None, managed: bool) -> bool:
    """Whether install must find the backend's binary on this machine: not when a URL is
    given that is not local (Ollama in Docker or on another machine), nor when a URL is
    given and andy-host does not start the backend itself."""
    if not backend_url:
        return True
    return managed and is_local_url(backend_url)


def loopback_proxies(host: str) -> list[str] | None:
    """``trusted_proxies`` for a coordinator listening on ``host``: on loopback only a
    proxy on this machine (nginx, docs/tls.md) reaches it, so its X-Forwarded-For is
    believed; None (the default: no proxy) on any other address."""
    if host.lower() == "localhost":
        return ["127.0.0.1", "::1"]
    try:
        address = ip_address(host.strip("[]"))
    except ValueError:
        return None
    return [str(address)] if address.is_loopback else None


def listen_note(host: str, port: int) -> str:
    """Where an installed coordinator listens, and what that means for who reaches it."""
    shown = f"[{host}]" if ":" in host else host
    if loopback_proxies(host) is not None:
        return (f"the coordinator listens on http://{shown}:{port}, loopback only: put nginx in front "
                "(docs/tls.md; it believes nginx's X-Forwarded-For) so hosts and clients elsewhere reach it, "
                "or reinstall with --host 0.0.0.0 to listen on every address")
    where = f"every address, port {port}" if host in ("0.0.0.0", "::") else f"http://{shown}:{port}"
    return (f"the coordinator listens on {where}, in plain HTTP: for TLS put nginx in front and "
            "reinstall with --host 127.0.0.1 (docs/tls.md)")


def check_backend(kind: str, managed: bool, llama_server: str | None) -> None:
    """Refuse, naming the fix, when the backend this host would wrap is not here."""
    if kind == "ollama":
        if shutil.which("ollama") is None:
            raise InstallError(
                "Ollama was not found: install it (https://ollama.com/download), pass --backend-url "
                "when it runs elsewhere (in Docker, on another machine), or use --backend llamacpp"
            )
        return
    from andy_host.tools.llama_build import find_llama_server

    if find_llama_server(llama_server) is None:
        raise InstallError(
            "llama.cpp's llama-server was not found: build it with `python -m andy_host.tools.llama_build` "
            "(or scripts/install.sh --managed), put llama-server on PATH, or pass --llama-server PATH"
            + (" (needed for --managed)" if managed else " (or --backend-url when it runs elsewhere)")
        )


def existing_admin_token(root: Path) -> str:
    """The admin token a previous install left in the coordinator's config, if any."""
    try:
        data = tomllib.loads(config_path("coordinator", root).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return ""
    token = data.get("coordinator", {}).get("admin_token", "")
    return token if isinstance(token, str) else ""


def _toml(settings: dict[str, dict[str, object]]) -> str:
    return tomli_w.dumps(
        {section: {k: v for k, v in values.items() if v is not None} for section, values in settings.items()}
    )


def _config_step(role: str, settings: dict[str, dict[str, object]], root: Path, plan: Plan) -> Write:
    path = config_path(role, root)
    if role != "coordinator" or settings.get("coordinator", {}).get("admin_token"):
        return Write(path, _toml(settings), 0o600)
    token = existing_admin_token(root)
    placeholder = TOKEN_PLACEHOLDER
    if token:
        placeholder = KEPT_PLACEHOLDER
        plan.notes.append(f"kept the admin token already in {config_path(role)}")
    else:
        token = new_secret(ADMIN_TOKEN_PREFIX)
        plan.notes.append(
            f"admin token (shown once; it is coordinator.admin_token in {config_path(role)}):\n  {token}"
        )
    settings = {**settings, "coordinator": {**settings.get("coordinator", {}), "admin_token": token}}
    shown = {**settings, "coordinator": {**settings["coordinator"], "admin_token": placeholder}}
    return Write(path, _toml(settings), 0o600, shown=_toml(shown))


def _enable(unit: str, root: Path) -> Run:
    if root == ROOT:
        return Run(["systemctl", "enable", "--now", unit])
    return Run(["systemctl", f"--root={root}", "enable", unit], offline=shutil.which("systemctl") is not None)


def plan_install(role: str, settings: dict[str, dict[str, object]], root: Path, prefix: str, user: str) -> Plan:
    plan = Plan()
    if root != ROOT or not user_exists(user):
        plan.steps.append(Run(["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR),
                               "--shell", "/usr/sbin/nologin", user]))
    config = _config_step(role, settings, root, plan)
    listen = settings.get("coordinator", {})
    if role == "coordinator":
        plan.notes.append(listen_note(str(listen.get("host", "127.0.0.1")), int(str(listen.get("port", 8080)))))
    plan.steps += [
        config,
        Run(["chown", f"{user}:{user}", str(config.path)]),
        Write(unit_path(role, root), render_unit(role, prefix, user)),
        Run(["systemctl", "daemon-reload"]),
        _enable(ROLES[role].unit, root),
    ]
    return plan


def _role_data(role: str, root: Path) -> list[Path]:
    """The files only this role keeps under the state directory."""
    state = under(root, STATE_DIR)
    if role == "host":
        return sorted(state.glob("host-*"))
    db = str(STATE_DIR / "pool.db")
    try:
        configured = tomllib.loads(config_path(role, root).read_text()).get("coordinator", {}).get("db", db)
        db = configured if isinstance(configured, str) and configured else db
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        pass
    base = under(root, Path(db)) if Path(db).is_absolute() else state / db
    return [base, base.with_name(base.name + "-wal"), base.with_name(base.name + "-shm")]


def plan_uninstall(role: str, root: Path, purge: bool, user: str) -> Plan:
    plan = Plan()
    unit = ROLES[role].unit
    if unit_path(role, root).exists():
        disable = (["systemctl", "disable", "--now", unit] if root == ROOT
                   else ["systemctl", f"--root={root}", "disable", unit])
        plan.steps += [Run(disable, offline=root != ROOT and shutil.which("systemctl") is not None),
                       Remove(unit_path(role, root)), Run(["systemctl", "daemon-reload"])]
    else:
        plan.notes.append(f"{unit} is not installed under {root}")
    if not purge:
        plan.notes.append(f"kept {config_path(role)} and {STATE_DIR} (--purge removes them)")
        return plan
    other = next(name for name in ROLES if name != role)
    plan.steps += [Remove(config_path(role, root)), *(Remove(p) for p in _role_data(role, root))]
    if not unit_path(other, root).exists():
        plan.steps += [Remove(under(root, STATE_DIR)), Remove(under(root, CACHE_DIR))]
        etc = config_path(role, root).parent
        if etc.is_dir() and all(p == config_path(role, root) for p in etc.iterdir()):
            plan.steps.append(Remove(etc))  # only when nothing else (the other role's config) is left
        if root != ROOT or user_exists(user):
            plan.steps.append(Run(["userdel", user]))
    return plan


def _write(step: Write) -> None:
    step.path.parent.mkdir(parents=True, exist_ok=True)
    partial = step.path.with_name(f".{step.path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, step.mode)
    with os.fdopen(fd, "w") as out:
        out.write(step.text)
    os.chmod(partial, step.mode)
    os.replace(partial, step.path)


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    else:
        return False
    return True


def _run(step: Run, root: Path, dry_run: bool, say: Callable[[str], object]) -> None:
    line = shlex.join(step.argv)
    if dry_run or (root != ROOT and not step.offline):
        say(f"would run: {line}")
        return
    say(f"running: {line}")
    result = subprocess.run(step.argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"`{line}` failed: {result.stderr.strip() or result.stdout.strip()}")


def execute(plan: Plan, root: Path, dry_run: bool, say: Callable[[str], object] = print) -> None:
    for step in plan.steps:
        if isinstance(step, Run):
            _run(step, root, dry_run, say)
        elif isinstance(step, Write) and dry_run:
            say(f"--- would write {step.path} (mode {step.mode:04o}) ---\n{step.shown or step.text}")
        elif isinstance(step, Write):
            _write(step)
            say(f"wrote {step.path}")
        elif dry_run:
            say(f"would remove {step.path}")
        elif _remove(step.path):
            say(f"removed {step.path}")
    if not dry_run:
        for note in plan.notes:
            say(note)
