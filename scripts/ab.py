#!/usr/bin/env python3
"""A/B the relay of two source trees on one noisy machine.

One llama.cpp stub; a coordinator and a host agent started from each tree (PYTHONPATH
points at it); requests sent one by one in turn (direct, A, B), so noise falls on all
three alike; then requests/s at concurrency 32, alternating A and B.

    git worktree add /tmp/base HEAD~1
    .venv/bin/python scripts/ab.py /tmp/base . [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from andy_host.coordinator.store.sqlite import SQLiteDatabase as Store  # noqa: E402
from tests.harness.procs import Processes  # noqa: E402

MODEL = "stub:latest"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def wait_for(log: Path, event: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == event:
                return entry
        time.sleep(0.05)
    raise TimeoutError(f"{event} never appeared in {log}")


def start_pool(
    tree: Path, tmp: Path, tag: str, stub_url: str, started: list[subprocess.Popen[bytes]]
) -> tuple[str, str]:
    db = tmp / f"{tag}.db"
    store = Store(str(db))
    key, _ = store.create_key("ab", daily_limit=10**9, per_minute=10**9)
    store.close()
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}

    def launch(args: list[str], log: Path) -> None:
        started.append(subprocess.Popen([sys.executable, "-m", "andy_host.cli", *args], cwd=tree, env=env,
                                        stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

    launch(["coordinator", "serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db), "--log-format", "json"],
           tmp / f"{tag}-coordinator.log")
    url = wait_for(tmp / f"{tag}-coordinator.log", "coordinator.listening")["url"]
    launch(["join", "--coordinator", url, "--backend", "llamacpp", "--backend-url", stub_url, "--name", tag,
            "--state-dir", str(tmp / f"{tag}-state"), "--log-format", "json", "--max-concurrency", "64"],
           tmp / f"{tag}-agent.log")
    wait_for(tmp / f"{tag}-agent.log", "link.connected")
    return url + "/api/andy/v1/chat/completions", key


async def interleaved(targets: list[tuple[str, str | None]], n: int) -> list[list[float]]:
    out: list[list[float]] = [[] for _ in targets]
    async with aiohttp.ClientSession() as session:
        for i in range(n + 50):
            for times, (url, key) in zip(out, targets, strict=True):
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                t0 = time.perf_counter()
                async with session.post(url, json=BODY, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: HTTP {resp.status}")
                if i >= 50:  # warm-up
                    times.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(url: str, key: str, seconds: float = 3.0, concurrency: int = 32) -> float:
    count = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                async with session.post(url, json=BODY, headers=headers) as resp:
                    await resp.read()
                count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="andy-ab-") as name:
        tmp = Path(name)
        procs = Processes(tmp)
        try:
            stub = procs.fake("llamacpp", "--model", MODEL, name="stub")
            a = start_pool(args.a.resolve(), tmp, "a", stub.url, started)
            b = start_pool(args.b.resolve(), tmp, "b", stub.url, started)
            time.sleep(1.5)
            direct, la, lb = asyncio.run(interleaved([(stub.url + "/v1/chat/completions", None), a, b], args.requests))
            d50, a50, b50 = (statistics.median(x) for x in (direct, la, lb))
            paired = statistics.median(y - x for x, y in zip(la, lb, strict=True)) * 1000
            print(f"concurrency 1, p50: direct {d50:.3f} ms, A {a50:.3f} ms (+{a50 - d50:.3f}), "
                  f"B {b50:.3f} ms (+{b50 - d50:.3f}); paired B - A {paired:+.0f} µs")
            ra, rb = [], []
            for _ in range(3):
                ra.append(asyncio.run(throughput(*a)))
                rb.append(asyncio.run(throughput(*b)))
            print(f"concurrency 32, requests/s: A {statistics.median(ra):.0f} {[round(x) for x in ra]}, "
                  f"B {statistics.median(rb):.0f} {[round(x) for x in rb]}")
        finally:
            for proc in started:
                proc.terminate()
            for proc in started:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
            procs.stop_all()


if __name__ == "__main__":
    main()
