#!/usr/bin/env python3
"""N simulated hosts in one process, speaking the real protocol to one coordinator:
hello with 3 of 50 models each, then heartbeats every INTERVAL seconds.

    simhosts.py COORDINATOR_URL N INTERVAL

Prints ``registered N in SECONDS`` once every host has its welcome, then runs until
terminated.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import connect

from andy_host.agent.link import ws_url
from andy_host.protocol import Heartbeat, Hello, ModelInfo, encode


async def host(url: str, i: int, interval: float, ready: asyncio.Queue[int]) -> None:
    rng = random.Random(i)
    models = [ModelInfo(name=f"model-{m}:latest", loaded=True) for m in rng.sample(range(50), 3)]
    capacity = rng.choice([1, 2, 4])
    hello = Hello(name=f"sim-{i}", backend="ollama", models=models, capacity=capacity, host_id=f"sim{i:06d}")
    async with connect(url, ping_interval=None, compression=None) as ws:
        await ws.send(encode(hello))
        await ws.recv()
        await ready.put(i)
        await asyncio.sleep(rng.uniform(0, interval))
        while True:
            await ws.send(encode(Heartbeat(active=0)))
            await asyncio.sleep(interval)


async def main(base: str, n: int, interval: float) -> None:
    url = ws_url(base)
    ready: asyncio.Queue[int] = asyncio.Queue()
    t0 = time.perf_counter()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(host(url, i, interval, ready)))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let connections progress
    async def all_ready() -> None:
        for _ in range(n):
            await ready.get()

    waiting = asyncio.create_task(all_ready())
    await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    if failed:
        print(f"failed: {failed[0].exception()!r}", flush=True)
        raise SystemExit(1)
    await waiting
    print(f"registered {n} in {time.perf_counter() - t0:.3f}", flush=True)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
