#!/usr/bin/env python3
"""The reconnect storm: N simulated hosts register with a coordinator, the coordinator
is SIGKILLed and started again on the same port and database, and every host comes
back at once with the real agent's backoff, as after a restart.

    storm.py [--hosts 10000] [--procs 3] [--interval 10] [--settle 10]

Prints JSON lines: the first registration, the coordinator's idle CPU and memory with
every host connected, and the time from the restart until every host is registered
again (the issue's goal: 10,000 hosts within 30 s on one replica).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.procs import Proc, Processes  # noqa: E402

SIM_GRACE = 30.0  # seconds the simulator's own view may lag the coordinator's count
QUIET: dict[str, str] = {}  # the listening event is an info line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def coordinator_hosts(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return int(json.loads(resp.read())["hosts"])
    except (OSError, ValueError, KeyError):
        return -1


def wait_registered(url: str, n: int, deadline: float) -> float:
    """Seconds until the coordinator itself counts ``n`` hosts (its view, not the
    simulator's: a simulator short of CPU would be slow to read its welcomes)."""
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        if coordinator_hosts(url) >= n:
            return time.monotonic() - t0
        time.sleep(0.25)
    raise TimeoutError(f"the coordinator counts {coordinator_hosts(url)} of {n} hosts")


def sim_view(sim: subprocess.Popen[str], deadline: float) -> tuple[dict[str, Any], float | None]:
    """The simulator's own view: its last totals, and when it saw every host welcomed
    (monotonic; None if not by ``deadline``). Secondary to the coordinator's count: a
    simulator short of CPU reads its welcomes late, or misses pongs and reconnects."""
    assert sim.stdout is not None
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        line = sim.stdout.readline()
        if not line:
            raise RuntimeError("the simulator ended")
        data = json.loads(line)
        if data.get("event") == "all_up":
            return last, time.monotonic()
        last = data
    return last, None


def _since(start: float, at: float | None) -> float | None:
    return None if at is None else round(at - start, 1)


def idle_cpu(proc: psutil.Process, seconds: float) -> float:
    """Percent of one core the process used over ``seconds``."""
    before, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after = proc.cpu_times()
    return ((after.user + after.system) - (before.user + before.system)) / (time.monotonic() - t0) * 100


def start(procs: Processes, port: int, interval: float, db: Path) -> Proc:
    env = {**QUIET, "ANDY_HOST_COORDINATOR_HOST_TIMEOUT": str(interval * 3)}
    return procs.coordinator(port=port, env=env, db=db)


def storm(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    procs, port, db = Processes(tmp), free_port(), tmp / "pool.db"
    coordinator = start(procs, port, args.interval, db)
    sim = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "simhosts.py"), coordinator.url, str(args.hosts),
         "--interval", str(args.interval), "--procs", str(args.procs), "--secrets", str(tmp / "secrets.json")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        t0 = time.monotonic()
        registered = wait_registered(coordinator.url, args.hosts, t0 + args.timeout)
        first, welcomed = sim_view(sim, time.monotonic() + SIM_GRACE)
        result: dict[str, Any] = {"hosts": args.hosts, "procs": args.procs, "first_register_s": round(registered, 1),
                                  "first_all_welcomed_s": _since(t0, welcomed),
                                  "first_failures": first.get("failures")}
        time.sleep(2)
        assert coordinator.popen is not None
        proc = psutil.Process(coordinator.popen.pid)
        result["idle_cpu_pct"] = round(idle_cpu(proc, args.settle), 1)
        result["rss_mb"] = round(proc.memory_info().rss / 1e6)
        time.sleep(2)  # the simulator writes the issued secrets every second
        coordinator.kill()
        t1 = time.monotonic()
        coordinator = start(procs, port, args.interval, db)
        result["restart_s"] = round(time.monotonic() - t1, 1)
        result["storm_register_s"] = round(wait_registered(coordinator.url, args.hosts, t1 + args.timeout), 1)
        again, welcomed = sim_view(sim, time.monotonic() + SIM_GRACE)
        result["storm_all_welcomed_s"] = _since(t1, welcomed)
        result["storm_failures"] = again.get("failures", 0) - (first.get("failures") or 0)
        return result
    finally:
        sim.terminate()
        sim.wait(10)
        procs.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=3, help="simulator processes")
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, seconds")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of idle CPU measured")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up on a registration after this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(storm(args, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
