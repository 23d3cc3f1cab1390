#!/usr/bin/env python3
"""andy-host benchmarks: what the pool costs over calling a backend directly, and how
far one coordinator scales. Starts every process itself; this process is only the
load generator. Prints a markdown table and writes JSON.

    .venv/bin/python scripts/bench.py [--runs 3] [--hosts 1000] [--real] [--json out.json]

Sections: relay overhead (latency at concurrency 1, requests/s at 32), streaming
(chunks/s at concurrency 4, added time to first chunk), failover cost, scale (N
simulated hosts on one coordinator: memory, idle CPU, registration time; scheduling
decision time), scheduling quality (simulated mixed pool, ours vs round-robin and
random), and with --real the small model on llama-server, direct versus pool.
Each figure is the median of --runs runs; the direct baseline is measured in the
same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.procs import Processes, get_json, wait_models  # noqa: E402

MODEL = "stub:latest"
QUIET_ENV: dict[str, str] = {}  # logs at the shipped default level (info)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


HEADERS: dict[str, str] = {}  # the API key for pool requests (set once the coordinator runs)


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    async with session.post(url, json=body, headers=HEADERS) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")


async def latencies(urls: list[str], n: int) -> list[list[float]]:
    """Sequential request times (ms) for each url, interleaved request by request, so
    that the direct baseline and the pool see the same moments of a noisy machine."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    out: list[list[float]] = [[] for _ in urls]
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm-up
            for url in urls:
                await _post(session, url, body)
        for _ in range(n):
            for times, url in zip(out, urls, strict=True):
                t0 = time.perf_counter()
                await _post(session, url, body)
                times.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(url: str, concurrency: int, seconds: float) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    count = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(concurrency):
            await _post(session, url, body)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await _post(session, url, body)
                count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - t0)


async def streaming(url: str, concurrency: int, chunks: int) -> tuple[float, float]:
    """(stub chunks delivered per second across all streams, median time to first content).

    The pool may carry several of the stub's chunks in one SSE event, so what is
    counted is the stub's chunks (one word each), not events."""
    words = " ".join(f"w{i}" for i in range(chunks - 2))
    body = {"model": MODEL, "messages": [{"role": "user", "content": words}], "stream": True}
    firsts: list[float] = []
    total = 0
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal total
            t0 = time.perf_counter()
            first = None
            async with session.post(url, json=body, headers=HEADERS) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: {") and b'"content"' in line:
                        choices = json.loads(line[6:])["choices"]
                        text = choices[0]["delta"].get("content") if choices else None
                        if not text:
                            continue
                        if first is None:
                            first = time.perf_counter() - t0
                        total += len(text.split())  # the stub's chunks are one word each
            firsts.append((first or 0) * 1000)

        await one()  # warm-up
        total, firsts = 0, []
        t0 = time.perf_counter()
        for _ in range(3):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return total / elapsed, statistics.median(firsts)


def relay_section(tmp: Path, runs: int) -> dict[str, Any]:
    procs = Processes(tmp / "relay")
    try:
        stub = procs.fake("llamacpp", "--model", MODEL, name="stub")
        coordinator = procs.coordinator(env=QUIET_ENV)
        HEADERS["Authorization"] = f"Bearer {coordinator.key}"  # keyed requests: the full access path
        procs.agent(coordinator.url, "llamacpp", stub.url, "bench-host", "--max-concurrency", "64", env=QUIET_ENV)
        wait_models(coordinator.url, {MODEL: 1})
        direct_url = stub.url + "/v1/chat/completions"
        pool_url = coordinator.url + "/api/andy/v1/chat/completions"
        res: dict[str, list[float]] = {k: [] for k in (
            "direct_p50", "direct_p99", "pool_p50", "pool_p99", "direct_rps", "pool_rps",
            "direct_chunks", "pool_chunks", "direct_ttfc", "pool_ttfc")}
        for _ in range(runs):
            d, p = asyncio.run(latencies([direct_url, pool_url], 500))
            res["direct_p50"].append(pct(d, 50))
            res["direct_p99"].append(pct(d, 99))
            res["pool_p50"].append(pct(p, 50))
            res["pool_p99"].append(pct(p, 99))
            res["direct_rps"].append(asyncio.run(throughput(direct_url, 32, 3)))
            res["pool_rps"].append(asyncio.run(throughput(pool_url, 32, 3)))
            dc, dt = asyncio.run(streaming(direct_url, 4, 500))
            pc, ptt = asyncio.run(streaming(pool_url, 4, 500))
            res["direct_chunks"].append(dc)
            res["pool_chunks"].append(pc)
            res["direct_ttfc"].append(dt)
            res["pool_ttfc"].append(ptt)
        return {k: statistics.median(v) for k, v in res.items()}
    finally:
        procs.stop_all()


def failover_section(tmp: Path, runs: int) -> dict[str, Any]:
    """Added latency of a failover before the first token (backend 500) and of a
    mid-stream continuation (stream cut), against the same request without a fault."""
    procs = Processes(tmp / "failover")
    try:
        f = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", name="fault")
        g = procs.fake("ollama", "--models", MODEL, "--label", "pool", "--nothing-loaded", name="good")
        env = {**QUIET_ENV, "ANDY_HOST_COORDINATOR_EJECT_AFTER": "100000"}
        coordinator = procs.coordinator(env=env)
        HEADERS["Authorization"] = f"Bearer {coordinator.key}"
        procs.agent(coordinator.url, "llamacpp", f.url, "f", env=QUIET_ENV)
        procs.agent(coordinator.url, "ollama", g.url, "g", env=QUIET_ENV)
        wait_models(coordinator.url, {MODEL: 2})
        url = coordinator.url + "/api/andy/v1/chat/completions"
        body = {"model": MODEL, "messages": [{"role": "user", "content": " ".join(["w"] * 20)}], "stream": True}

        async def timed(mode: str | None, n: int) -> list[float]:
            out = []
            async with aiohttp.ClientSession() as session:
                for _ in range(n):
                    async with session.post(f.url + "/_fault", json={"mode": mode, "count": 1 if mode else 0}) as r:
                        await r.read()
                    t0 = time.perf_counter()
                    async with session.post(url, json=body, headers=HEADERS) as resp:
                        raw = await resp.read()
                    assert b"data: [DONE]" in raw, raw[-200:]
                    out.append((time.perf_counter() - t0) * 1000)
            return out

        clean, pre, mid = [], [], []
        for _ in range(runs):
            clean.append(statistics.median(asyncio.run(timed(None, 50))))
            pre.append(statistics.median(asyncio.run(timed("500", 50))))
            mid.append(statistics.median(asyncio.run(timed("cut", 50))))
        return {"clean_ms": statistics.median(clean), "pre_content_ms": statistics.median(pre),
                "mid_stream_ms": statistics.median(mid)}
    finally:
        procs.stop_all()


def scale_section(tmp: Path, hosts: int, interval: float) -> dict[str, Any]:
    procs = Processes(tmp / "scale")
    try:
        coordinator = procs.coordinator(env={
            **QUIET_ENV, "ANDY_HOST_COORDINATOR_HOST_TIMEOUT": str(interval * 3),
        })
        assert coordinator.popen is not None
        proc = psutil.Process(coordinator.popen.pid)
        rss_before = proc.memory_info().rss
        sim = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "simhosts.py"), coordinator.url, str(hosts),
             "--interval", str(interval)],
            stdout=subprocess.DEVNULL,
        )
        t0 = time.monotonic()
        while get_json(coordinator.url + "/health")["hosts"] < hosts:  # the coordinator's own count
            if sim.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError("the simulated hosts did not all register")
            time.sleep(0.1)
        registered_s = time.monotonic() - t0
        time.sleep(2)
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        time.sleep(max(10.0, interval * 2))
        cpu1 = proc.cpu_times()
        idle_cpu = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (time.monotonic() - t0) * 100
        rss = proc.memory_info().rss
        health = json.loads(__import__("urllib.request").request.urlopen(coordinator.url + "/health").read())
        sim.terminate()
        sim.wait(10)
        return {"hosts": health["hosts"], "register_s": registered_s, "rss_mb": rss / 1e6,
                "rss_before_mb": rss_before / 1e6, "idle_cpu_pct": idle_cpu}
    finally:
        procs.stop_all()


def decision_section(hosts: int, models: int) -> dict[str, float]:
    """Time one scheduling decision with the real Scheduler over N hosts, M models."""
    from andy_host.config import CoordinatorConfig
    from andy_host.coordinator.hosts.registry import Host, Registry
    from andy_host.coordinator.pool.scheduler import Scheduler
    from andy_host.protocol import ModelInfo

    async def noop(*_: Any) -> None:
        return None

    rng = random.Random(7)
    registry = Registry()
    scheduler = Scheduler(registry, CoordinatorConfig())
    names = [f"model-{i}:latest" for i in range(models)]
    for i in range(hosts):
        capacity = rng.choice([1, 2, 4, 8])
        host = Host(id=f"h{i}", name=f"h{i}", backend="ollama", capacity=capacity, send=noop, close=noop, conn=i)
        served = rng.sample(names, 3)
        registry.add(host)
        registry.set_models(host, [ModelInfo(name=n, loaded=rng.random() < 0.5) for n in served])
        host.health.tps = rng.uniform(10, 120)
    times = []
    for _ in range(20000):
        model = rng.choice(names)
        t0 = time.perf_counter_ns()
        scheduler.pick(model, set())
        times.append((time.perf_counter_ns() - t0) / 1000)
    return {"p50_us": pct(times, 50), "p99_us": pct(times, 99),
            "hosts_per_model": statistics.mean(len(v) for v in registry.by_model.values())}


# tokens/s per slot and slots, roughly: H100, A100, RTX 4090, RTX 3060, a CPU box; two of each
PROFILES = [(110, 8), (80, 6), (60, 4), (30, 2), (8, 1)]
TOKENS_PER_JOB = 200


def _simulate(policy: str, load: float, seed: int) -> dict[str, float]:
    """One policy under Poisson arrivals; per-slot speeds are constant (no batching slow-down)."""
    import heapq

    from andy_host.config import CoordinatorConfig
    from andy_host.coordinator.hosts.registry import Host, Registry
    from andy_host.coordinator.pool.scheduler import Scheduler
    from andy_host.protocol import ModelInfo

    async def noop(*_: Any) -> None:
        return None

    spec = [p for p in PROFILES for _ in range(2)]
    rate = load * sum(tps * slots for tps, slots in spec) / TOKENS_PER_JOB  # jobs per second
    rng = random.Random(seed)
    registry = Registry()
    scheduler = Scheduler(registry, CoordinatorConfig())
    hosts: list[Host] = []
    speed: dict[str, float] = {}
    for i, (tps, slots) in enumerate(spec):
        h = Host(id=f"h{i}", name=f"h{i}", backend="ollama", capacity=slots, send=noop, close=noop, conn=i)
        registry.add(h)
        registry.set_models(h, [ModelInfo(name="m:latest", loaded=True)])
        h.health.tps = float(tps)  # as the coordinator measures it after a few jobs
        hosts.append(h)
        speed[h.id] = tps
    events: list[tuple[float, int, str, Any]] = []
    t = 0.0
    for seq in range(4000):
        t += rng.expovariate(rate)
        heapq.heappush(events, (t, seq, "arrive", t))
    seq = 4000
    rr = 0
    queue: list[float] = []
    latencies: list[float] = []
    waits: list[float] = []
    finished_at = 0.0

    def choose() -> Host | None:
        nonlocal rr
        free = [h for h in hosts if h.free > 0]
        if not free:
            return None
        if policy == "andy-host":
            return scheduler.pick("m:latest", set())
        if policy == "random":
            return rng.choice(free)
        for k in range(len(hosts)):
            h = hosts[(rr + k) % len(hosts)]
            if h.free > 0:
                rr = (rr + k + 1) % len(hosts)
                return h
        return None

    def start(now: float, arrived: float) -> bool:
        nonlocal seq
        h = choose()
        if h is None:
            return False
        a = scheduler.assign(h, "c")
        waits.append(now - arrived)
        heapq.heappush(events, (now + TOKENS_PER_JOB / speed[h.id], seq, "finish", (a, arrived)))
        seq += 1
        return True

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            if queue or not start(now, payload):
                queue.append(payload)
        else:
            a, arrived = payload
            a.host.jobs.pop(a.id, None)
            latencies.append(now - arrived)
            finished_at = now
            while queue and start(now, queue[0]):
                queue.pop(0)
    return {"throughput_jobs_s": len(latencies) / finished_at, "p50_s": pct(latencies, 50),
            "p95_s": pct(latencies, 95), "mean_wait_s": statistics.mean(waits)}


def quality_section(load: float, seed: int = 1) -> dict[str, dict[str, float]]:
    """Discrete-event simulation of a mixed pool (speeds of real cards) under Poisson load."""
    return {policy: _simulate(policy, load, seed) for policy in ("andy-host", "round-robin", "random")}


async def _real_stream(url: str, n: int, max_tokens: int) -> tuple[float, float]:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me a long story about a fox."}],
            "stream": True, "max_tokens": max_tokens, "temperature": 0, "stream_options": {"include_usage": True}}
    tps, ttft = [], []
    # llama-server may close a connection after a stream: a fresh one per request, both ways
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(n):
            t0 = time.perf_counter()
            first = None
            tokens = 0
            async with session.post(url, json=body, headers=HEADERS) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                        tokens += 1
                        if first is None:
                            first = time.perf_counter()
            end = time.perf_counter()
            assert first is not None
            ttft.append((first - t0) * 1000)
            tps.append((tokens - 1) / (end - first))
    return statistics.median(tps), statistics.median(ttft)


def real_section(tmp: Path, runs: int) -> dict[str, float]:
    procs = Processes(tmp / "real")
    try:
        coordinator = procs.coordinator(env=QUIET_ENV)
        HEADERS["Authorization"] = f"Bearer {coordinator.key}"
        agent = procs.agent(coordinator.url, "llamacpp", None, "real", "--managed", "--model", "smollm2-135m",
                            env={**QUIET_ENV, "ANDY_HOST_BACKEND_PARALLEL": "1"}, timeout=120)
        wait_models(coordinator.url, {"smollm2-135m:latest": 1}, timeout=60)
        assert agent.popen is not None
        child = next(c for c in psutil.Process(agent.popen.pid).children() if "llama-server" in c.name())
        port = next(c.laddr.port for c in child.net_connections() if c.status == "LISTEN")
        direct = f"http://127.0.0.1:{port}/v1/chat/completions"
        pool = coordinator.url + "/api/andy/v1/chat/completions"
        d_tps, d_ttft, p_tps, p_ttft = [], [], [], []
        for _ in range(runs):
            a, b = asyncio.run(_real_stream(direct, 3, 64))
            c, d = asyncio.run(_real_stream(pool, 3, 64))
            d_tps.append(a), d_ttft.append(b), p_tps.append(c), p_ttft.append(d)
        return {"direct_tps": statistics.median(d_tps), "direct_ttft_ms": statistics.median(d_ttft),
                "pool_tps": statistics.median(p_tps), "pool_ttft_ms": statistics.median(p_ttft)}
    finally:
        procs.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--only", default="", help="comma list: relay,failover,scale,decision,quality,real")
    parser.add_argument("--json", default=str(ROOT / "bench-results" / "bench.json"))
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else {"relay", "failover", "scale", "decision", "quality"}
    if args.real:
        only.add("real")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"andy-bench-{os.getpid()}"
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "command": " ".join(["scripts/bench.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if "relay" in only:
        results["relay"] = relay_section(tmp, args.runs)
    if "failover" in only:
        results["failover"] = failover_section(tmp, args.runs)
    if "scale" in only:
        results["scale"] = scale_section(tmp, args.hosts, args.heartbeat)
    if "decision" in only:
        results["decision"] = decision_section(args.hosts, 50)
    if "quality" in only:
        results["quality"] = {f"{int(load * 100)}%": quality_section(load) for load in (0.8, 1.2)}
    if "real" in only:
        results["real"] = real_section(tmp, args.runs)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(render(results))


def render(r: dict[str, Any]) -> str:
    lines = [f"Machine: {r['machine']}  \nDate: {r['date']}  \nCommand: `{r['command']}`", ""]
    if "relay" in r:
        x = r["relay"]
        lines += [
            "| relay (stub backend) | direct | through the pool | pool / direct |",
            "| --- | --- | --- | --- |",
            f"| latency p50, concurrency 1 | {x['direct_p50']:.2f} ms | {x['pool_p50']:.2f} ms | "
            f"{x['pool_p50'] - x['direct_p50']:+.2f} ms |",
            f"| latency p99, concurrency 1 | {x['direct_p99']:.2f} ms | {x['pool_p99']:.2f} ms | "
            f"{x['pool_p99'] - x['direct_p99']:+.2f} ms |",
            f"| requests/s, concurrency 32 | {x['direct_rps']:.0f} | {x['pool_rps']:.0f} | "
            f"{x['pool_rps'] / x['direct_rps']:.2f} |",
            f"| streamed chunks/s, concurrency 4 | {x['direct_chunks']:.0f} | {x['pool_chunks']:.0f} | "
            f"{x['pool_chunks'] / x['direct_chunks']:.2f} |",
            f"| time to first chunk | {x['direct_ttfc']:.2f} ms | {x['pool_ttfc']:.2f} ms | "
            f"{x['pool_ttfc'] - x['direct_ttfc']:+.2f} ms |",
            "",
            f"Machine state: the stub's direct p50 was {x['direct_p50']:.2f} ms in this run; issue 9's "
            f"goals were set where it was about 0.7 ms{' (this run: slower)' if x['direct_p50'] > 0.85 else ''}.",
            "",
        ]
    if "failover" in r:
        x = r["failover"]
        lines += [
            "| failover (20-token stream) | median time |",
            "| --- | --- |",
            f"| no fault | {x['clean_ms']:.1f} ms |",
            f"| backend 500 before the first token, retried on another host | {x['pre_content_ms']:.1f} ms "
            f"(+{x['pre_content_ms'] - x['clean_ms']:.1f}) |",
            f"| stream cut mid-way, continued on another host | {x['mid_stream_ms']:.1f} ms "
            f"(+{x['mid_stream_ms'] - x['clean_ms']:.1f}) |",
            "",
        ]
    if "scale" in r:
        x = r["scale"]
        lines += [
            f"| scale: {x['hosts']} simulated hosts | value |",
            "| --- | --- |",
            f"| time to register all | {x['register_s']:.2f} s |",
            f"| coordinator resident memory | {x['rss_mb']:.0f} MB (empty: {x['rss_before_mb']:.0f} MB) |",
            f"| coordinator CPU while idle (heartbeats only) | {x['idle_cpu_pct']:.2f} % of a core |",
            "",
        ]
    if "decision" in r:
        x = r["decision"]
        lines += [
            "| one scheduling decision (1,000 hosts, 50 models) | value |",
            "| --- | --- |",
            f"| p50 | {x['p50_us']:.1f} µs |",
            f"| p99 | {x['p99_us']:.1f} µs |",
            "",
        ]
    if "quality" in r:
        lines += ["| scheduling quality (simulated mixed pool) | load | jobs/s | p50 | p95 | mean queue wait |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for load, policies in r["quality"].items():
            for name, x in policies.items():
                lines.append(f"| {name} | {load} | {x['throughput_jobs_s']:.2f} | {x['p50_s']:.2f} s | "
                             f"{x['p95_s']:.2f} s | {x['mean_wait_s']:.2f} s |")
        lines.append("")
    if "real" in r:
        x = r["real"]
        lines += [
            "| real model (smollm2-135m, llama-server) | direct | through the pool |",
            "| --- | --- | --- |",
            f"| tokens/s (one stream) | {x['direct_tps']:.1f} | {x['pool_tps']:.1f} |",
            f"| time to first token | {x['direct_ttft_ms']:.1f} ms | {x['pool_ttft_ms']:.1f} ms |",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
