"""Hostile hosts: a raw websocket client (not the agent) attacks a real coordinator
process while an honest host serves beside it, and honest traffic is unaffected.

Each test is one attack from the hostile-host issue: injected markup, malformed and
oversized readings, id takeover, answer floods, empty chunks, a frozen host.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from typing import Any

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from andy_host.config import CoordinatorConfig
from andy_host.protocol import CLOSE_ID_REFUSED, EXIT_REFUSED
from tests.harness.evil import RawHost, hello, join, refused
from tests.harness.procs import Proc, Processes, until, wait_models
from tests.harness.sse import chat_stream
from tests.system.test_observability import ARTIFACTS, chromium

MODEL = "m:latest"
DEFAULTS = {  # the shipped defaults, where tests.harness.procs.FAST_ENV shortens them
    "ANDY_HOST_COORDINATOR_HEARTBEAT_INTERVAL": "10", "ANDY_HOST_COORDINATOR_HOST_TIMEOUT": "30",
    "ANDY_HOST_COORDINATOR_QUEUE_TIMEOUT": "30", "ANDY_HOST_COORDINATOR_TTFT_TIMEOUT": "60",
    "ANDY_HOST_AGENT_HEARTBEAT_INTERVAL": "10",
}


def honest_pool(procs: Processes, env: dict[str, str] | None = None, *backend_args: str) -> tuple[Proc, Proc]:
    backend = procs.fake("ollama", "--models", MODEL, "--label", "honest", *backend_args)
    coordinator = procs.coordinator(env=env)
    agent = procs.agent(coordinator.url, "ollama", backend.url, "honest-host")
    wait_models(coordinator.url, {MODEL: 1})
    return coordinator, agent


def honest_answer(base: str, content: str = "still fine") -> None:
    reply = httpx.post(base + "/v1/chat/completions", timeout=20,
                       json={"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == f"honest heard: {content}"


def test_dashboard_runs_none_of_the_injected_markup(procs: Processes) -> None:
    coordinator, _ = honest_pool(procs)
    markup = '<img src=x onerror="document.title=\'pwned\'">'

    async def attack() -> None:
        frame = hello(name=f"evil{markup}", models=[{"name": f"x{markup}:latest"}], hardware={"gpus": [
            {"name": markup, "utilization_gpu": markup, "temperature": markup, "error": markup,
             "memory_total": markup}]})
        host = await join(coordinator.url, frame)
        await host.send({"type": "heartbeat", "active": 0, "status": "paused", "reason": markup,
                         "hardware": {"gpus": [{"name": markup, "temperature": f"90{markup}"}]}})
        result = await asyncio.to_thread(chromium, "--dump-dom", coordinator.url + "/")
        await host.ws.close()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard-hostile.html").write_text(result.stdout)
        dom = result.stdout.split("<script>")[0]
        assert 'data-loaded="1"' in dom, result.stderr[-2000:]
        assert "<img" not in dom and "pwned" not in dom.split("<title>")[1].split("</title>")[0]
        assert "&lt;img" in dom  # shown, as text
        assert 'data-host="honest-host"' in dom

    asyncio.run(attack())
    honest_answer(coordinator.url)


def test_malformed_or_huge_readings_never_break_metrics_or_the_feed(procs: Processes) -> None:
    coordinator, _ = honest_pool(procs)
    deep: Any = "x"
    for _ in range(900):
        deep = {"n": deep}

    async def attack() -> list[int | None]:
        closes = []
        for hardware in ({"gpus": 5}, None, {"gpus": [{"name": deep}]}, [1, 2]):
            try:
                host = await join(coordinator.url, hello(name="odd", hardware=hardware))
                await host.send({"type": "heartbeat", "active": 0, "hardware": hardware})
                await asyncio.sleep(0.3)
                closes.append(host.ws.close_code)
                await host.ws.close()
            except ConnectionClosed as exc:
                closes.append(exc.rcvd.code if exc.rcvd else None)
        # 8 hosts, each with ~2 MB of junk in its readings: cut to a few hundred bytes each
        junk = {"gpus": [{"name": "g" * 100_000, "uuid": "u" * 100_000, "extra": "e" * 100_000} for _ in range(16)],
                "host": {"cpu": "c" * 100_000}, "more": "m" * 400_000}
        hosts = [await join(coordinator.url, hello(name=f"junk-{i}", hardware=junk), max_size=None) for i in range(8)]
        async with httpx.AsyncClient(timeout=10) as client:
            feed = await client.get(coordinator.url + "/api/andy/dashboard")
            metrics = await client.get(coordinator.url + "/metrics")
            assert feed.status_code == 200 and metrics.status_code == 200
            assert len(feed.content) < 120_000, len(feed.content)  # was ~7 MB per poll with 14 such hosts
            health = await client.get(coordinator.url + "/health")
            assert health.status_code == 200 and health.json()["hosts"] == 1 + len(hosts)  # all 8 still counted
        for host in hosts:
            await host.ws.close()
        return closes

    closes = asyncio.run(attack())
    assert closes[0] == 1008 and closes[3] == 1008  # a list of gpus that is not a list: refused at decode
    for path in ("/api/andy/dashboard", "/metrics", "/health"):
        assert httpx.get(coordinator.url + path).status_code == 200
    assert "internal_error" not in coordinator.log.read_text()
    honest_answer(coordinator.url)


def test_a_host_id_cannot_be_taken_over(procs: Processes) -> None:
    coordinator, agent = honest_pool(procs)
    honest_id = agent.host_id
    seen = len(agent.events())

    async def attack() -> list[tuple[int | None, str]]:
        results = []
        for i in range(20):
            secret = None if i % 2 else "andy_hs_" + "a" * 38
            results.append(await refused(coordinator.url, hello(name="thief", host_id=honest_id, secret=secret)))
        return results

    for code, reason in asyncio.run(attack()):
        assert code == CLOSE_ID_REFUSED and "belongs to another host" in reason
    assert not [e for e in agent.events()[seen:] if e.get("event") == "link.down"]  # never evicted
    assert "replaced by a new connection" not in coordinator.log.read_text()
    honest_answer(coordinator.url)
    # offline, its id is still bound to its secret: the ledger row cannot be claimed
    agent.signal(signal.SIGINT)
    assert agent.popen is not None and agent.popen.wait(10) == 0
    wait_models(coordinator.url, {MODEL: 0})
    code, _ = asyncio.run(refused(coordinator.url, hello(name="thief", host_id=honest_id)))
    assert code == CLOSE_ID_REFUSED


def _rss(proc: Proc) -> int:
    assert proc.popen is not None
    return int(psutil.Process(proc.popen.pid).memory_info().rss)


def _stalled_client(base: str, model: str) -> socket.socket:
    """A streaming request whose client never reads its answer."""
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "flood me"}]})
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    return sock


@pytest.mark.parametrize("reader", ["stalled", "reading"])
def test_an_answer_flood_keeps_the_coordinators_memory_bounded(procs: Processes, reader: str) -> None:
    coordinator, _ = honest_pool(procs)
    total = 200 * 2**20
    block = "x" * 65536
    sent = {"bytes": 0}

    async def flood(host: RawHost, job: dict[str, Any]) -> None:
        try:
            while sent["bytes"] < total:
                await host.chunk(job["id"], block)  # cancel frames are ignored, as a hostile host would
                sent["bytes"] += len(block)
        except ConnectionClosed:
            pass

    peak = {"rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _rss(coordinator))
            time.sleep(0.02)

    async def attack() -> dict[str, Any]:
        host = await join(coordinator.url, hello(name="flooder", models=[{"name": "flood:latest"}]), max_size=None)
        serving = asyncio.create_task(host.serve(flood))
        wait_models(coordinator.url, {"flood:latest": 1})
        before = _rss(coordinator)
        sampler = threading.Thread(target=sample)
        sampler.start()
        if reader == "stalled":
            client = _stalled_client(coordinator.url, "flood:latest")
            outcome = None
        else:
            outcome = (await asyncio.to_thread(chat_stream, coordinator.url, "flood:latest", "flood me")).outcome
        while sent["bytes"] < total and not serving.done():
            await asyncio.to_thread(honest_answer, coordinator.url, f"during {sent['bytes']}")
            await asyncio.sleep(0.2)
        stop.set()
        sampler.join()
        if reader == "stalled":
            client.close()
        await host.ws.close()
        serving.cancel()
        return {"before": before, "outcome": outcome}

    seen = asyncio.run(attack())
    grown = (peak["rss"] - seen["before"]) / 2**20
    print(f"\nflood of {sent['bytes'] / 2**20:.0f} MiB to a {reader} client: coordinator RSS "
          f"{seen['before'] / 2**20:.0f} MiB before, peak {peak['rss'] / 2**20:.0f} MiB (+{grown:.0f} MiB)")
    assert sent["bytes"] >= total
    assert grown < 64, grown  # it was +606 MiB (stalled) and +297 MiB (reading) before the bounds
    if reader == "reading":
        assert seen["outcome"] == "error_event"  # cut at max_answer_chars, never a truncated success
    honest_answer(coordinator.url)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_empty_chunks_do_not_hold_a_job(procs: Processes, stream: bool) -> None:
    env = {"ANDY_HOST_COORDINATOR_TTFT_TIMEOUT": "2", "ANDY_HOST_COORDINATOR_ANSWER_TIMEOUT": "2"}
    coordinator, _ = honest_pool(procs, env, "--nothing-loaded")  # the raw host has it loaded: preferred

    async def empties(host: RawHost, job: dict[str, Any]) -> None:
        try:
            while True:
                await host.chunk(job["id"], "")
                await asyncio.sleep(0.1)
        except ConnectionClosed:
            pass

    async def attack() -> tuple[Any, str]:
        host = await join(coordinator.url)
        serving = asyncio.create_task(host.serve(empties))
        wait_models(coordinator.url, {MODEL: 2})
        if stream:
            result: Any = await asyncio.to_thread(chat_stream, coordinator.url, MODEL, "are you there")
        else:
            result = await asyncio.to_thread(honest_answer, coordinator.url, "are you there")
        assert host.jobs, "the raw host was never given the job"
        await host.ws.close()
        serving.cancel()
        return result, host.welcome["host_id"]

    result, raw_id = asyncio.run(attack())
    if stream:
        assert result.outcome == "complete" and result.text == "honest heard: are you there"
    # moved by ttft_timeout / answer_timeout (2 s here), not held to request_timeout (600 s)
    silent = [e for e in coordinator.events() if e.get("event") == "job.host_silent"]
    assert [(e["host_id"], e["what"]) for e in silent] == [
        (raw_id, "before the first token" if stream else "for a whole answer")]


def _timed_stream(base: str, content: str, arrivals: list[tuple[float, str]], result: dict[str, Any]) -> None:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    result["error"] = event["error"]
                for choice in event.get("choices", []):
                    if choice["delta"].get("content"):
                        arrivals.append((time.monotonic(), choice["delta"]["content"]))
            elif line == "data: [DONE]":
                result["done"] = True


def test_a_frozen_host_is_replaced_within_5_seconds_at_defaults(procs: Processes) -> None:
    fast = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.05", name="fake-a")
    other = procs.fake("llamacpp", "--model", MODEL, "--label", "pool", "--token-delay", "0.05", name="fake-b")
    coordinator = procs.coordinator(env=DEFAULTS)
    agents = {name: procs.agent(coordinator.url, "llamacpp", url, name, env=DEFAULTS)
              for name, url in (("host-a", fast.url), ("host-b", other.url))}
    wait_models(coordinator.url, {MODEL: 2})
    content = "freeze " + " ".join(f"w{i}" for i in range(120))  # about 6 s of tokens
    arrivals: list[tuple[float, str]] = []
    result: dict[str, Any] = {}
    client = threading.Thread(target=_timed_stream, args=(coordinator.url, content, arrivals, result))
    client.start()
    until(lambda: len(arrivals) >= 10, within=30, what="the first 10 tokens")
    key = {"Authorization": f"Bearer {coordinator.key}"}
    busy = [h["name"] for h in get_json_with(coordinator.url + "/api/andy/pool_status", key)["hosts"] if h["load"]]
    victim = agents[busy[0]]
    victim.signal(signal.SIGSTOP)
    try:
        client.join(60)
        assert result.get("done") and "error" not in result, result
        assert "".join(text for _, text in arrivals) == f"pool heard: {content}"
    finally:
        victim.signal(signal.SIGCONT)
    # what moved it: the busy-host timer (under 5 s at its default), not host_timeout (30 s)
    assert CoordinatorConfig().busy_host_timeout < 5
    frozen = [e for e in coordinator.events() if e.get("event") == "host.frozen"]
    assert [e["host_id"] for e in frozen] == [victim.host_id] and frozen[0]["jobs"] == 1


def get_json_with(url: str, headers: dict[str, str]) -> Any:
    return httpx.get(url, headers=headers, timeout=10).json()


def test_model_names_are_bounded_per_host_and_in_all(procs: Processes) -> None:
    env = {"ANDY_HOST_COORDINATOR_MAX_MODELS_PER_HOST": "20", "ANDY_HOST_COORDINATOR_MAX_KNOWN_MODELS": "50"}
    coordinator, _ = honest_pool(procs, env)

    async def attack() -> None:
        for batch in range(10):
            names = [{"name": f"spam-{batch}-{i}:latest"} for i in range(300)]
            host = await join(coordinator.url, hello(name=f"spammer-{batch}", models=names))
            await host.send({"type": "models", "models": names[::-1]})
            await host.ws.close()

    asyncio.run(attack())
    import sqlite3

    rows = sqlite3.connect(procs.tmp / "coordinator.db").execute("SELECT COUNT(*) FROM models_seen").fetchone()[0]
    assert rows <= 50
    missing = httpx.post(coordinator.url + "/v1/chat/completions",
                         json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found", missing.text
    honest_answer(coordinator.url)


def test_connections_before_hello_are_capped_and_timed_out(procs: Processes) -> None:
    env = {"ANDY_HOST_COORDINATOR_MAX_CONNECTING_PER_ADDRESS": "4", "ANDY_HOST_COORDINATOR_HELLO_TIMEOUT": "1"}
    coordinator, _ = honest_pool(procs, env)
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from tests.harness.evil import ws_url

    async def attack() -> tuple[int, list[tuple[int | None, str | None]]]:
        idle = [await connect(ws_url(coordinator.url)) for _ in range(4)]
        with pytest.raises(InvalidStatus) as err:
            await connect(ws_url(coordinator.url))
        closes = []
        for ws in idle:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)  # closed for saying nothing (hello_timeout 1 s)
            closes.append((ws.close_code, ws.close_reason))
        return err.value.response.status_code, closes

    status, closes = asyncio.run(attack())
    assert status == 503 and closes == [(1008, "no hello")] * 4
    honest_answer(coordinator.url)


def test_a_full_gate_lines_hosts_up_instead_of_refusing_them(procs: Processes) -> None:
    """Admission pacing: with every connecting place taken, the next connection waits in a
    bounded line and is let in when a place frees; only one past the line gets a 503."""
    env = {"ANDY_HOST_COORDINATOR_MAX_CONNECTING": "2", "ANDY_HOST_COORDINATOR_MAX_CONNECTING_PER_ADDRESS": "16",
           "ANDY_HOST_COORDINATOR_ADMISSION_QUEUE": "1", "ANDY_HOST_COORDINATOR_HELLO_TIMEOUT": "1"}
    coordinator, _ = honest_pool(procs, env)
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import InvalidStatus

    from tests.harness.evil import ws_url

    async def storm() -> tuple[int, list[tuple[int | None, str | None]]]:
        idle = [await connect(ws_url(coordinator.url)) for _ in range(2)]  # silent: hold both places

        async def opening() -> ClientConnection:
            return await connect(ws_url(coordinator.url))

        waiting = asyncio.create_task(opening())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # in line, not refused
        with pytest.raises(InvalidStatus) as err:
            await connect(ws_url(coordinator.url))  # the line (1) is full
        admitted = await asyncio.wait_for(waiting, 10)  # let in when a silent one is cut at 1 s
        await asyncio.wait_for(asyncio.gather(*(ws.wait_closed() for ws in idle)), 10)
        await admitted.send(json.dumps(hello(name="paced")))
        assert json.loads(await asyncio.wait_for(admitted.recv(), 5))["type"] == "welcome"
        await admitted.close()
        return err.value.response.status_code, [(ws.close_code, ws.close_reason) for ws in idle]

    status, cut = asyncio.run(storm())
    assert status == 503 and cut == [(1008, "no hello")] * 2  # the places it waited for: freed by the timer
    honest_answer(coordinator.url)


def test_slow_headers_and_slow_bodies_are_cut(procs: Processes) -> None:
    env = {"ANDY_HOST_COORDINATOR_HTTP_IDLE_TIMEOUT": "1", "ANDY_HOST_COORDINATOR_BODY_TIMEOUT": "1"}
    coordinator, _ = honest_pool(procs, env)
    port = int(coordinator.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        slow.settimeout(10)  # a bound for a loaded machine: recv raises TimeoutError past it
        assert slow.recv(1000) == b""  # closed by http_idle_timeout (1 s), with nothing said
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"mo")
        slow.settimeout(5)
        answer = slow.recv(4000).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "did not arrive" in answer
    honest_answer(coordinator.url)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["\\udfff"]}',
        b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}',
    ],
    ids=["nested", "surrogate-content", "surrogate-stop", "surrogate-model"],
)
def test_odd_client_input_is_a_400(pool_for_input: Proc, body: bytes) -> None:
    reply = httpx.post(pool_for_input.url + "/v1/chat/completions", content=body,
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {pool_for_input.key}"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"]


@pytest.fixture(scope="module")
def pool_for_input(module_procs: Processes) -> Proc:
    backend = module_procs.fake("ollama", "--models", MODEL, "--label", "honest")
    coordinator = module_procs.coordinator(env={"ANDY_HOST_COORDINATOR_ADMIN_TOKEN": "admin-secret",
                                                "ANDY_HOST_COORDINATOR_TRUSTED_PROXIES": "127.0.0.1",
                                                "ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "3"})
    module_procs.agent(coordinator.url, "ollama", backend.url, "honest-host")
    wait_models(coordinator.url, {MODEL: 1})
    return coordinator


def test_odd_admin_input_is_a_4xx(pool_for_input: Proc) -> None:
    url = pool_for_input.url + "/api/andy/admin/keys"
    assert httpx.get(url, headers={"Authorization": "Bearer ädmin".encode()}).status_code == 401
    admin = {"Authorization": "Bearer admin-secret"}
    for body in ({"name": "k", "host_token": {"a": 1}}, {"name": "k", "daily_limit": 1e30},
                 {"name": "k", "daily_limit": 10**30}, {"name": {"x": 1}}):
        reply = httpx.post(url, json=body, headers=admin)
        assert reply.status_code == 400, (body, reply.text)
    assert httpx.post(url, json={"name": "ok"}, headers=admin).status_code == 201


def test_forwarded_for_is_read_across_header_lines(pool_for_input: Proc) -> None:
    """Behind a trusted proxy that appends its own line, a spoofed first line must not
    make each request a new client: the rightmost untrusted address is the client."""
    statuses = []
    for i in range(5):
        headers = [("X-Forwarded-For", f"10.9.{i}.1"), ("X-Forwarded-For", "198.51.100.7")]
        reply = httpx.post(pool_for_input.url + "/v1/chat/completions", headers=headers,
                           json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        statuses.append(reply.status_code)
    assert statuses == [200, 200, 200, 429, 429]


def test_a_host_sending_non_float32_embeddings_is_dropped_not_a_500(procs: Processes) -> None:
    coordinator, _ = honest_pool(procs)

    async def huge(host: RawHost, job: dict[str, Any]) -> None:
        await host.send({"type": "done", "id": job["id"], "embeddings": [[1e300, 1.0]], "usage": {}})

    async def attack() -> httpx.Response:
        host = await join(coordinator.url, hello(name="nan", models=[{"name": "emb:latest", "embed": True}]))
        serving = asyncio.create_task(host.serve(huge))
        wait_models(coordinator.url, {"emb:latest": 1})
        reply = await asyncio.to_thread(
            httpx.post, coordinator.url + "/v1/embeddings", json={"model": "emb", "input": "x",
                                                               "encoding_format": "base64"},
            headers={"Authorization": f"Bearer {coordinator.key}"}, timeout=20)
        serving.cancel()
        return reply

    reply = asyncio.run(attack())
    assert reply.status_code in (502, 503), reply.text
    assert re.search(r"float32|Host lost|No available", reply.json()["error"]["message"])
    honest_answer(coordinator.url)


def test_an_agent_claiming_someone_elses_id_exits_at_once(procs: Processes) -> None:
    """A fatal refusal is one clear line and exit status 78 (the unit does not restart on it),
    not a retry loop."""
    coordinator, agent = honest_pool(procs)
    honest_id = agent.host_id
    clone_state = procs.tmp / "clone-state"
    clone_state.mkdir()
    (clone_state / "host-clone.id").write_text(honest_id + "\n")  # its id, without its secret
    backend = procs.fake("ollama", "--models", MODEL, "--label", "clone")
    clone = procs.agent(coordinator.url, "ollama", backend.url, "clone", "--state-dir", str(clone_state), wait=False)
    assert clone.popen is not None and clone.popen.wait(15) == EXIT_REFUSED
    assert "belongs to another host" in clone.wait_event("agent.refused")["reason"]
    assert len([e for e in clone.events() if e.get("event") == "agent.refused"]) == 1
    honest_answer(coordinator.url)


def test_a_host_that_resets_after_hello_leaves_no_ghost(procs: Processes) -> None:
    coordinator, _ = honest_pool(procs)
    port = int(coordinator.url.rsplit(":", 1)[1])
    import base64
    import os
    import struct

    for _ in range(8):
        sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /api/andy/hosts/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        sock.recv(4096)
        payload = json.dumps(hello(name="ghost", capacity=1024, jobs=[f"j{i}" for i in range(1024)])).encode()
        mask = os.urandom(4)
        header = bytes([0x81, 0xFF]) + struct.pack(">Q", len(payload)) + mask
        sock.sendall(header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, while the coordinator is still welcoming it
    time.sleep(1.0)
    assert httpx.get(coordinator.url + "/health").json()["hosts"] == 1
    for i in range(10):
        honest_answer(coordinator.url, f"no ghost {i}")


def test_pings_do_not_stretch_the_hello_timeout(procs: Processes) -> None:
    coordinator, _ = honest_pool(procs, {"ANDY_HOST_COORDINATOR_HELLO_TIMEOUT": "1.5"})
    from websockets.asyncio.client import connect

    from tests.harness.evil import ws_url

    async def attack() -> tuple[int, int | None, str | None]:
        ws = await connect(ws_url(coordinator.url), ping_interval=None)
        pings = 0
        try:
            while pings < 100:  # 30 s of pings: twenty times the hello timeout
                await ws.ping()
                pings += 1
                await asyncio.sleep(0.3)
        except ConnectionClosed:
            pass
        return pings, ws.close_code, ws.close_reason

    pings, code, reason = asyncio.run(attack())
    assert pings < 100 and (code, reason) == (1008, "no hello"), (pings, code, reason)


def test_frames_for_jobs_a_host_does_not_hold_cost_nothing(procs: Processes) -> None:
    """Done frames with 8 MB of embeddings for made-up jobs, and model-list spam, are
    dropped before their bodies are checked: the coordinator keeps answering quickly."""
    coordinator, _ = honest_pool(procs)
    zeros = [[0.0] * 4096 for _ in range(160)]
    frame = json.dumps({"type": "done", "id": "nope", "usage": {}, "embeddings": zeros})
    models = json.dumps({"type": "models", "models": [{"name": f"spam-{i}:latest"} for i in range(128)]})

    async def attack() -> list[int]:
        host = await join(coordinator.url, hello(name="spender"), max_size=None)

        async def spam() -> None:
            for i in range(60):
                await host.send(frame if i % 2 else models)

        spammer = asyncio.create_task(spam())
        hosts = []
        async with httpx.AsyncClient(timeout=10) as client:
            while not spammer.done():
                health = await client.get(coordinator.url + "/health")
                assert health.status_code == 200
                hosts.append(health.json()["hosts"])
                await asyncio.sleep(0.05)
            await spammer
            hosts.append((await client.get(coordinator.url + "/health")).json()["hosts"])
        await host.ws.close()
        return hosts

    hosts = asyncio.run(attack())
    assert hosts and set(hosts) == {2}  # answered all along; the spender's frames dropped, it not cut
    honest_answer(coordinator.url)


def test_new_host_ids_per_address_are_limited(procs: Processes) -> None:
    coordinator, _ = honest_pool(procs, {"ANDY_HOST_COORDINATOR_NEW_HOSTS_PER_HOUR": "5"})

    async def attack() -> list[int | None]:
        welcomed = [await join(coordinator.url, hello(name=f"fresh-{i}")) for i in range(4)]  # 5 with the honest one
        codes = [(await refused(coordinator.url, hello(name=f"more-{i}")))[0] for i in range(3)]
        for host in welcomed:
            await host.ws.close()
        return codes

    assert asyncio.run(attack()) == [4006] * 3
    honest_answer(coordinator.url)


def test_a_stranger_cannot_squat_an_established_models_short_name(procs: Processes) -> None:
    from andy_host.coordinator.store.sqlite import SQLiteDatabase

    backend = procs.fake("ollama", "--models", "sweaterdog/andy-4:latest", "--label", "honest")
    coordinator = procs.coordinator()
    store = SQLiteDatabase(str(procs.tmp / "coordinator.db"))
    token, _ = store.create_token("mine", trusted=True)
    store.close()
    procs.agent(coordinator.url, "ollama", backend.url, "trusted-host", "--token", token)
    wait_models(coordinator.url, {"sweaterdog/andy-4:latest": 1})

    async def attack() -> list[str]:
        squatters = [await join(coordinator.url, hello(name=f"squat-{i}", models=[{"name": name, "loaded": True}]))
                     for i, name in enumerate(("evil/andy-4:latest", "andy-4:latest"))]
        serving = [asyncio.create_task(host.serve(lambda h, job: h.done(job["id"], "squatted", completion_tokens=1)))
                   for host in squatters]
        wait_models(coordinator.url, {"evil/andy-4:latest": 1, "andy-4:latest": 1})
        answers = []
        for i in range(4):
            reply = await asyncio.to_thread(
                httpx.post, coordinator.url + "/v1/chat/completions", timeout=20,
                json={"model": "andy-4", "messages": [{"role": "user", "content": f"who {i}"}]})
            answers.append(reply.json()["choices"][0]["message"]["content"])
        for host in squatters:
            await host.ws.close()
        for task in serving:
            task.cancel()
        return answers

    assert asyncio.run(attack()) == [f"honest heard: who {i}" for i in range(4)]
