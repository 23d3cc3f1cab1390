#!/usr/bin/env python3
"""What a job crossing replicas costs. Starts Redis, the coordinators, a stub backend and
a host itself; prints a markdown table and writes JSON.

    .venv/bin/python scripts/bench_replicas.py [--n 200] [--json out.json]

1. Latency at concurrency 1, interleaved request by request in one run: the stub
   directly; one coordinator without Redis (the default); replica B serving its own
   host; replica A, whose request runs on B's host (one internal HTTP hop). Also
   requests/s at concurrency 32, single process versus the crossing.
2. The transports a crossing could use, measured alone in one process on loopback: a
   job out and 50 chunks back over an aiohttp chunked response (what the pool uses),
   over Redis pub/sub, and over Redis streams (XADD / XREAD BLOCK).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402

from tests.harness.procs import Processes, get_json  # noqa: E402
from tests.harness.servers import start_redis  # noqa: E402

SECRET = "bench-replica-secret-0123456789"
CHUNKS = 50


def pool_section(tmp: Path, n: int) -> dict[str, Any]:
    redis = start_redis()
    procs = Processes(tmp)
    try:
        stub = procs.fake("llamacpp", "--model", bench.MODEL, name="stub")
        env = {"ANDY_HOST_COORDINATOR_REDIS_URL": redis.url, "ANDY_HOST_COORDINATOR_REPLICA_SECRET": SECRET,
               "ANDY_HOST_COORDINATOR_DIRECTORY_INTERVAL": "0.5"}
        single = procs.coordinator(name="single", db=tmp / "single.db")
        a = procs.coordinator(name="a", db=tmp / "a.db", env={**env, "ANDY_HOST_COORDINATOR_REPLICA_ID": "a"})
        b = procs.coordinator(name="b", db=tmp / "b.db", env={**env, "ANDY_HOST_COORDINATOR_REPLICA_ID": "b"})
        for coordinator, name in ((single, "h-single"), (b, "h-b")):
            procs.agent(coordinator.url, "llamacpp", stub.url, name, "--max-concurrency", "64")
        deadline = time.monotonic() + 20
        while bench.MODEL not in get_json(a.url + "/health")["replica"]["peers"].get("b", []):
            if time.monotonic() > deadline:
                raise TimeoutError("replica a never saw b's host")
            time.sleep(0.1)
        urls = [stub.url + "/v1/chat/completions"] + [
            c.url + "/api/andy/v1/chat/completions" for c in (single, b, a)]
        times = asyncio.run(bench.latencies(urls, n))
        names = ["direct", "single", "replica_local", "replica_crossed"]
        out: dict[str, Any] = {f"{k}_ms": {"p50": round(statistics.median(t), 2), "p90": round(bench.pct(t, 90), 2)}
                               for k, t in zip(names, times, strict=True)}
        out["rps_c32_single"] = round(asyncio.run(bench.throughput(urls[1], 32, 5)), 1)
        out["rps_c32_crossed"] = round(asyncio.run(bench.throughput(urls[3], 32, 5)), 1)
        procs.agent(a.url, "llamacpp", stub.url, "h-a", "--max-concurrency", "64")  # now each replica has a host
        out["rps_c32_one_replica"] = round(asyncio.run(throughput_split(urls[2:3], 32, 5)), 1)
        out["rps_c32_two_replicas"] = round(asyncio.run(throughput_split(urls[2:], 32, 5)), 1)
        return out
    finally:
        procs.stop_all()
        redis.stop()


async def throughput_split(urls: list[str], concurrency: int, seconds: float) -> float:
    """Requests/s with ``concurrency`` clients spread evenly over ``urls`` (a load
    balancer's round robin over replicas)."""
    import aiohttp

    body = {"model": bench.MODEL, "messages": [{"role": "user", "content": "hi"}]}
    count = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for i in range(concurrency):
            await bench._post(session, urls[i % len(urls)], body)
        deadline = time.perf_counter() + seconds

        async def worker(url: str) -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await bench._post(session, url, body)
                count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(urls[i % len(urls)]) for i in range(concurrency)))
        return count / (time.perf_counter() - t0)


async def _http_transport(n: int) -> list[float]:
    async def job(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(CHUNKS):
            await response.write(b'{"type":"chunk","id":"x","content":" w%d"}\n' % i)
        await response.write_eof()
        return response

    import aiohttp

    app = web.Application()
    app.router.add_post("/job", job)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n + 20):
            t0 = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/job", data=b'{"job":1}') as resp:
                got = 0
                async for data in resp.content.iter_any():
                    got += data.count(b"\n")
            assert got == CHUNKS
            out.append((time.perf_counter() - t0) * 1000)
    await runner.cleanup()
    return out[20:]


async def _pubsub_transport(url: str, n: int) -> list[float]:
    from redis import asyncio as aioredis

    server: Any = aioredis.from_url(url)
    client: Any = aioredis.from_url(url)
    jobs = server.pubsub()
    await jobs.subscribe("jobs")

    async def serve() -> None:
        async for message in jobs.listen():
            if message["type"] == "message":
                reply = message["data"].decode()
                for i in range(CHUNKS):
                    await server.publish(reply, b'{"type":"chunk","id":"x","content":" w%d"}' % i)

    task = asyncio.create_task(serve())
    out = []
    for k in range(n + 20):
        replies = client.pubsub()
        await replies.subscribe(f"reply:{k}")
        t0 = time.perf_counter()
        await client.publish("jobs", f"reply:{k}")
        got = 0
        while got < CHUNKS:
            message = await replies.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                got += 1
        out.append((time.perf_counter() - t0) * 1000)
        await replies.aclose()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await jobs.aclose()
    await server.aclose()
    await client.aclose()
    return out[20:]


async def _streams_transport(url: str, n: int) -> list[float]:
    from redis import asyncio as aioredis

    server: Any = aioredis.from_url(url)
    client: Any = aioredis.from_url(url)

    async def serve() -> None:
        last = "$"
        while True:
            got = await server.xread({"jobs": last}, block=5000)
            for _, entries in got:
                for entry_id, fields in entries:
                    last = entry_id
                    reply = fields[b"reply"].decode()
                    for i in range(CHUNKS):
                        await server.xadd(reply, {"d": b'{"type":"chunk","id":"x","content":" w%d"}' % i})

    task = asyncio.create_task(serve())
    await asyncio.sleep(0.1)
    out = []
    for k in range(n + 20):
        reply, last, got = f"reply:{k}", "0", 0
        t0 = time.perf_counter()
        await client.xadd("jobs", {"reply": reply})
        while got < CHUNKS:
            for _, entries in await client.xread({reply: last}, block=5000):
                got += len(entries)
                last = entries[-1][0]
        out.append((time.perf_counter() - t0) * 1000)
        await client.delete(reply)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await server.aclose()
    await client.aclose()
    return out[20:]


def transport_section(n: int) -> dict[str, Any]:
    redis = start_redis()
    try:
        results = {
            "http_chunked": asyncio.run(_http_transport(n)),
            "redis_pubsub": asyncio.run(_pubsub_transport(redis.url, n)),
            "redis_streams": asyncio.run(_streams_transport(redis.url, n)),
        }
    finally:
        redis.stop()
    return {k: {"p50_ms": round(statistics.median(v), 2), "p90_ms": round(bench.pct(v, 90), 2)}
            for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/andy-bench-replicas"))
    args = parser.parse_args()
    result = {"transports": transport_section(args.n), "pool": pool_section(args.tmp, args.n)}
    lines = ["| figure | p50 ms | p90 ms |", "| --- | --- | --- |"]
    for name, v in result["pool"].items():
        if isinstance(v, dict):
            lines.append(f"| latency c=1, {name.removesuffix('_ms')} | {v['p50']} | {v['p90']} |")
    for name, v in result["transports"].items():
        lines.append(f"| job + {CHUNKS} chunks over {name} | {v['p50_ms']} | {v['p90_ms']} |")
    print("\n".join(lines))
    pool = result["pool"]
    print(f"\nrequests/s at c=32: single process {pool['rps_c32_single']}, crossed {pool['rps_c32_crossed']}, "
          f"one replica {pool['rps_c32_one_replica']}, two replicas {pool['rps_c32_two_replicas']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
