"""Fuzzing: host frames (hypothesis) against the decoder and a live coordinator, and
the HTTP API against its own OpenAPI document (schemathesis, bounded, in CI)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from andy_host.errors import ProtocolError
from andy_host.protocol import PROTOCOL_VERSION, decode_host
from tests.harness.procs import Processes, get_json, wait_models

TYPES = ["hello", "heartbeat", "models", "chunk", "done", "error", "job", "cancel", "welcome", "x"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
hostile_text = st.text(max_size=30) | st.sampled_from(["<img src=x onerror=alert(1)>", "\u202e", "x" * 300])
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
gpu = st.fixed_dictionaries({}, optional={
    k: numbers | hostile_text | json_values
    for k in ("index", "name", "uuid", "memory_total", "memory_used", "memory_free", "utilization_gpu", "temperature",
              "power_draw_w", "mig_mode", "mig_instances", "other_processes_memory", "error")})
hardware = st.none() | json_values | st.fixed_dictionaries({}, optional={
    "gpus": st.lists(gpu, max_size=20) | json_values, "host": json_values | st.fixed_dictionaries(
        {}, optional={k: numbers | hostile_text for k in ("cpu", "cores", "load_1m", "ram_total")}),
    "nvml": hostile_text | json_values})
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={**{k: json_values for k in ("id", "content", "tokens", "usage", "embeddings", "status", "message",
                                          "finish_reason", "active", "models", "name", "capacity", "protocol",
                                          "backend", "loaded", "retry_after", "features", "secret", "reason",
                                          "logprobs", "tool_calls")},
              "hardware": hardware, "pause": st.lists(hostile_text | st.sampled_from(["gpu_hot", "draining"]))},
)
heartbeats = st.fixed_dictionaries(
    {"type": st.just("heartbeat"), "active": st.integers(0, 3), "hardware": hardware},
    optional={"status": st.sampled_from(["active", "paused", "busy"]), "reason": hostile_text,
              "pause": st.lists(hostile_text | st.sampled_from(["gpu_hot", "draining", "vram_low"]), max_size=9),
              "features": st.lists(hostile_text, max_size=40), "loaded": st.lists(hostile_text, max_size=3)},
)


@settings(max_examples=400, deadline=None)
@given(frames)
def test_decoder_accepts_or_rejects_cleanly(frame: dict[str, Any]) -> None:
    try:
        decode_host(json.dumps(frame))
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_decoder_on_garbage(raw: bytes | str) -> None:
    try:
        decode_host(raw)
    except ProtocolError:
        pass


def test_fuzzed_host_frames_leave_the_coordinator_serving(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", "m:latest")
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "ollama", backend.url, "good-host")
    wait_models(coordinator.url, {"m:latest": 1})
    batch: list[str] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(frames | heartbeats, min_size=1, max_size=4))
    def collect(sequence: list[dict[str, Any]]) -> None:
        batch.append(json.dumps(sequence))

    collect()

    async def evil() -> None:
        ws_url = coordinator.url.replace("http://", "ws://") + "/api/andy/hosts/ws"
        hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "name": "fuzzer", "backend": "ollama",
                 "models": [{"name": "m:latest"}], "capacity": 2}
        for sequence in batch:
            async with connect(ws_url) as ws:
                await ws.send(json.dumps(hello))
                await ws.recv()
                try:
                    for frame in json.loads(sequence):
                        await ws.send(json.dumps(frame))
                    await asyncio.wait_for(ws.recv(), 0.05)
                except (ConnectionClosed, TimeoutError):
                    pass

    server_errors: list[str] = []

    async def evil_and_watch() -> None:
        """Send the frames, and after each sequence read every page a host's data reaches."""
        import httpx

        ws_url = coordinator.url.replace("http://", "ws://") + "/api/andy/hosts/ws"
        hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "name": "fuzzer", "backend": "ollama",
                 "models": [{"name": "m:latest"}], "capacity": 2}
        key = {"Authorization": f"Bearer {coordinator.key}"}
        async with httpx.AsyncClient(timeout=10) as client:
            for sequence in batch:
                async with connect(ws_url) as ws:
                    await ws.send(json.dumps(hello))
                    await ws.recv()
                    try:
                        for frame in json.loads(sequence):
                            await ws.send(json.dumps(frame))
                        await asyncio.wait_for(ws.recv(), 0.05)
                    except (ConnectionClosed, TimeoutError):
                        pass
                    for path in ("/metrics", "/api/andy/dashboard", "/health", "/api/andy/pool_status", "/"):
                        reply = await client.get(coordinator.url + path, headers=key)
                        if reply.status_code >= 500:
                            server_errors.append(f"{path} {reply.status_code} after {sequence[:200]}")

    asyncio.run(evil())
    asyncio.run(evil_and_watch())
    print(f"\nhost-frame fuzzing: {2 * len(batch)} sequences, {len(server_errors)} 5xx")
    assert server_errors == []
    health = get_json(coordinator.url + "/health")
    assert health["status"] == "ok"
    assert coordinator.popen is not None and coordinator.popen.poll() is None
    assert "internal_error" not in coordinator.log.read_text()
    import httpx

    answer = httpx.post(coordinator.url + "/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "still here"}]}, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "ollama heard: still here"


def test_schemathesis_finds_no_5xx_and_no_schema_violation(procs: Processes) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.fail("schemathesis is not installed: run scripts/setup")
    backend = procs.fake("ollama", "--models", "smollm2-135m:latest")  # the model the examples name
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "ollama", backend.url, "host")
    wait_models(coordinator.url, {"smollm2-135m:latest": 1})
    result = subprocess.run(
        [cli, "run", coordinator.url + "/openapi.json", "--no-color",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "15", "--seed", "1",
         "-H", f"Authorization: Bearer {coordinator.key}"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-5000:]
    assert coordinator.popen is not None and coordinator.popen.poll() is None
