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

from andy_host.protocol import PROTOCOL_VERSION, ProtocolError, decode_host
from tests.procs import Processes, get_json, wait_models

TYPES = ["hello", "heartbeat", "models", "chunk", "done", "error", "job", "cancel", "welcome", "x"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={k: json_values for k in ("id", "content", "tokens", "usage", "embeddings", "status", "message",
                                       "finish_reason", "active", "models", "name", "capacity", "protocol",
                                       "backend", "loaded", "hardware", "retry_after")},
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
    @given(st.lists(frames, min_size=1, max_size=4))
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

    asyncio.run(evil())
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
    backend = procs.fake("ollama", "--models", "gemma3-270m:latest")  # the model the examples name
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "ollama", backend.url, "host")
    wait_models(coordinator.url, {"gemma3-270m:latest": 1})
    result = subprocess.run(
        [cli, "run", coordinator.url + "/openapi.json", "--no-color",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "15", "--seed", "1",
         "-H", f"Authorization: Bearer {coordinator.key}"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-5000:]
    assert coordinator.popen is not None and coordinator.popen.poll() is None
