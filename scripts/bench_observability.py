#!/usr/bin/env python3
"""Observability at scale: N simulated hosts (scripts/simhosts.py) on one coordinator;
the time and size of GET /metrics, /api/andy/dashboard and /api/andy/pool_status, and
/health's latency while each is read back to back (does a read stall the event loop?).

    bench_observability.py [N]     # default 10,000 hosts; prints one JSON line
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from storm import free_port, wait_registered  # noqa: E402

from tests.harness.procs import Processes  # noqa: E402


def get(url: str, key: str | None = None) -> tuple[float, int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - started, len(body)


def health_during(url: str, path: str, key: str | None, seconds: float = 8.0) -> dict[str, float]:
    """/health latency (ms) while another thread reads ``path`` back to back."""
    stop, reads = threading.Event(), [0]

    def hammer() -> None:
        while not stop.is_set():
            get(url + path, key)
            reads[0] += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    latencies = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        latencies.append(get(url + "/health")[0])
        time.sleep(0.02)
    stop.set()
    thread.join()
    latencies.sort()
    return {"reads": reads[0], "health_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "health_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
            "health_max_ms": round(1000 * latencies[-1], 1)}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        procs = Processes(Path(tmp))
        coordinator = procs.coordinator(port=free_port(), env={"ANDY_HOST_COORDINATOR_HOST_TIMEOUT": "30",
                                                               "ANDY_HOST_COORDINATOR_METRICS_CACHE_SECONDS": "1"})
        url, key = coordinator.url, coordinator.key
        sim = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "simhosts.py"), url, str(n), "--procs", "2"],
                               stdout=subprocess.DEVNULL)
        try:
            wait_registered(url, n, time.monotonic() + 240)
            time.sleep(3)
            out: dict[str, Any] = {"hosts": n}
            for name, path, auth in (("metrics", "/metrics", None), ("dashboard", "/api/andy/dashboard", None),
                                     ("pool_status", "/api/andy/pool_status", key)):
                runs = [get(url + path, auth) for _ in range(5)]
                out[name] = {"ms_median": round(1000 * statistics.median(r[0] for r in runs), 1), "bytes": runs[-1][1]}
            out["health_idle"] = health_during(url, "/health", None, 3)
            out["health_during_metrics"] = health_during(url, "/metrics", None)
            out["health_during_dashboard"] = health_during(url, "/api/andy/dashboard", None)
            print(json.dumps(out), flush=True)
        finally:
            sim.terminate()
            sim.wait(10)
            procs.stop_all()


if __name__ == "__main__":
    main()
