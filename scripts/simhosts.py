#!/usr/bin/env python3
"""Simulated hosts speaking the real protocol to a coordinator, spread over several
processes so that the simulator is not the bottleneck it measures.

    simhosts.py COORDINATOR_URL N [--interval 10] [--procs 4] [--secrets FILE]

Each host has its own loopback source address (127.1.0.1, 127.1.0.2, ...; Linux routes
all of 127/8 to lo), as hosts on the internet each have theirs, so per-address caps
apply as they would in a real pool. It says hello with 3 of 50 models, keeps the
secret its welcome issues (in ``--secrets``, so a later run comes back as the same
hosts), heartbeats every INTERVAL seconds and, whenever its connection fails or
ends, retries with the real agent's jittered backoff (``agent.link.Backoff`` with the
agent's default reconnect_min/max).

The parent prints one JSON line per second:
``{"t": seconds, "up": hosts registered now, "connects": ..., "failures": ...}``,
``{"event": "all_up", "t": ...}`` each time every host is registered again (after a
coordinator restart, say) and runs until terminated or ``--duration`` ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import connect

try:
    import uvloop
except ImportError:  # Windows
    uvloop = None  # type: ignore[assignment]

from andy_host.agent.link import Backoff, ws_url
from andy_host.config import AgentConfig
from andy_host.protocol import Heartbeat, Hello, ModelInfo, Welcome, decode_coordinator, encode

LINE_LIMIT = 64 * 1024 * 1024  # bytes of one worker report line at most


def source_address(i: int) -> str:
    """A distinct loopback address per host: 127.1.0.1 upwards."""
    n = i + 1
    return f"127.{1 + n // 65536}.{(n // 256) % 256}.{n % 256}"


class Host:
    def __init__(self, url: str, i: int, interval: float, secret: str | None) -> None:
        rng = random.Random(i)
        self.url, self.i, self.interval, self.secret = url, i, interval, secret
        self.models = [ModelInfo(name=f"model-{m}:latest", loaded=True) for m in rng.sample(range(50), 3)]
        self.capacity = rng.choice([1, 2, 4])
        agent = AgentConfig()
        self.backoff = Backoff(agent.reconnect_min, agent.reconnect_max)

    def hello(self) -> Hello:
        return Hello(name=f"sim-{self.i}", backend="ollama", models=self.models, capacity=self.capacity,
                     host_id=f"sim{self.i:06d}", secret=self.secret)

    async def session(self, report: dict[str, int], issued: dict[int, str]) -> None:
        async with connect(self.url, ping_interval=None, compression=None, open_timeout=30,
                           local_addr=(source_address(self.i), 0)) as ws:
            report["connects"] += 1
            await ws.send(encode(self.hello()))
            welcome = decode_coordinator(await ws.recv())
            if not isinstance(welcome, Welcome):
                raise ConnectionError(f"no welcome: {type(welcome).__name__}")
            if welcome.secret:
                self.secret = issued[self.i] = welcome.secret
            self.backoff.reset()
            report["up"] += 1
            try:
                await asyncio.sleep(random.uniform(0, self.interval))
                while True:
                    await ws.send(encode(Heartbeat(active=0)))
                    await asyncio.sleep(self.interval)
            finally:
                report["up"] -= 1

    async def run(self, report: dict[str, int], issued: dict[int, str]) -> None:
        while True:
            try:
                await self.session(report, issued)
            except Exception:  # any failure: retry as the agent does
                report["failures"] += 1
            await asyncio.sleep(self.backoff.next())


async def worker(url: str, indices: range, interval: float, secrets: dict[int, str]) -> None:
    """One simulator process: its hosts, and one JSON report line per second on stdout."""
    report = {"up": 0, "connects": 0, "failures": 0}
    issued: dict[int, str] = {}
    hosts = [Host(url, i, interval, secrets.get(i)) for i in indices]
    tasks = [asyncio.create_task(h.run(report, issued)) for h in hosts]
    while True:
        await asyncio.sleep(1)
        print(json.dumps({**report, "issued": {str(k): v for k, v in issued.items()}}), flush=True)
        issued.clear()
        if all(t.done() for t in tasks):
            return


async def parent(args: argparse.Namespace) -> None:
    secrets_path = Path(args.secrets) if args.secrets else None
    secrets = json.loads(secrets_path.read_text()) if secrets_path and secrets_path.exists() else {}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, __file__, args.url, str(args.n), "--interval", str(args.interval),
        "--worker", f"{w}/{args.procs}", *(["--secrets", str(secrets_path)] if secrets_path else []),
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        limit=LINE_LIMIT,  # a report carries the secrets issued that second: thousands in a storm
    ) for w in range(args.procs)]
    latest: list[dict[str, int]] = [{"up": 0, "connects": 0, "failures": 0} for _ in procs]
    t0 = time.perf_counter()

    async def follow(w: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            data = json.loads(line)
            secrets.update(data.pop("issued"))
            latest[w] = data

    readers = [asyncio.create_task(follow(w, p)) for w, p in enumerate(procs)]
    was_all = False
    try:
        while args.duration <= 0 or time.perf_counter() - t0 < args.duration:
            await asyncio.sleep(1)
            for reader in readers:  # a reader that died would leave its worker blocked on a full pipe
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    raise RuntimeError("a simulator worker's report could not be read") from reader.exception()
            total = {k: sum(r[k] for r in latest) for k in ("up", "connects", "failures")}
            print(json.dumps({"t": round(time.perf_counter() - t0, 1), **total}), flush=True)
            now_all = total["up"] >= args.n
            if now_all and not was_all:
                print(json.dumps({"event": "all_up", "t": round(time.perf_counter() - t0, 1)}), flush=True)
            was_all = now_all
            if secrets_path is not None:
                secrets_path.write_text(json.dumps(secrets))
    finally:
        for p in procs:
            p.terminate()
        for r in readers:
            r.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("n", type=int)
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, seconds")
    parser.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--secrets", help="JSON file keeping the hosts' secrets between runs")
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (0: until terminated)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the parent's finally stops its workers
    if args.worker:
        w, of = (int(x) for x in args.worker.split("/"))
        path = Path(args.secrets) if args.secrets else None
        known = {int(k): v for k, v in json.loads(path.read_text()).items()} if path and path.exists() else {}
        try:
            run = uvloop.run if uvloop is not None else asyncio.run  # the simulator must not be the bottleneck
            run(worker(ws_url(args.url), range(w, args.n, of), args.interval, known))
        except BrokenPipeError:  # the parent is gone
            pass
    else:
        asyncio.run(parent(args))


if __name__ == "__main__":
    main()
