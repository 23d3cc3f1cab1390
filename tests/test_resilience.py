"""Hosts and coordinator killed and restarted; a host sending garbage; Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal

import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from andy_host.protocol import PROTOCOL_VERSION
from tests.harness.procs import Processes, wait_models

SOLO = "solo:latest"


def ask(base: str, model: str = SOLO, content: str = "hi") -> str:
    client = openai.OpenAI(base_url=base + "/api/andy/v1", api_key="none", max_retries=0, timeout=20)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
    return reply.choices[0].message.content or ""


def test_host_killed_and_restarted(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", SOLO)
    coordinator = procs.coordinator()
    agent = procs.agent(coordinator.url, "ollama", backend.url, "solo-host")
    wait_models(coordinator.url, {SOLO: 1})
    assert ask(coordinator.url) == "ollama heard: hi"

    agent.kill()  # SIGKILL: no goodbye
    wait_models(coordinator.url, {SOLO: 0})
    with pytest.raises(openai.APIStatusError) as err:
        ask(coordinator.url)
    assert err.value.status_code == 503
    assert "No available hosts" in err.value.message

    again = procs.agent(coordinator.url, "ollama", backend.url, "solo-host")
    wait_models(coordinator.url, {SOLO: 1})
    assert ask(coordinator.url, content="back") == "ollama heard: back"
    # the same host, by its id kept in the state directory
    ids = [e["host_id"] for e in (*agent.events(), *again.events()) if e.get("event") == "link.connected"]
    assert len(ids) >= 2 and len(set(ids)) == 1  # (both runs log to solo-host.log)


def test_coordinator_restart_hosts_reconnect(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", SOLO)
    first = procs.coordinator()
    port = int(first.url.rsplit(":", 1)[1])
    a = procs.agent(first.url, "ollama", backend.url, "host-1")
    b = procs.agent(first.url, "ollama", backend.url, "host-2")
    wait_models(first.url, {SOLO: 2})
    seen_a, seen_b = len(a.notices), len(b.notices)  # what each says from here is about the kill
    first.kill()
    a.wait_disconnected(after=seen_a)
    second = procs.coordinator(port=port, name="coordinator-2")
    assert second.url == first.url
    a.wait_connected(after=seen_a)
    b.wait_connected(after=seen_b)
    wait_models(second.url, {SOLO: 2})
    assert ask(second.url) == "ollama heard: hi"


async def _bad_host(url: str, frame: str | bytes) -> tuple[int | None, str]:
    ws_url = url.replace("http://", "ws://") + "/api/andy/hosts/ws"
    hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "name": "evil", "backend": "ollama",
             "models": [{"name": "evil:latest"}], "capacity": 1}
    async with connect(ws_url, max_size=None) as ws:
        await ws.send(json.dumps(hello))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        try:
            await ws.send(frame)
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize(
    "frame, code",
    [
        ("{not json", 1008),
        (json.dumps({"type": "chunk", "id": 5, "content": "x"}), 1008),
        (json.dumps({"type": "teleport"}), 1008),
        (b"\x00\x01binary", 1003),
        (json.dumps({"type": "chunk", "id": "j1", "content": "x" * (9 * 1024 * 1024)}), 1009),
    ],
    ids=["not-json", "wrong-type", "unknown-message", "binary", "oversized"],
)
def test_malformed_frame_drops_only_that_host(procs: Processes, frame: str | bytes, code: int) -> None:
    backend = procs.fake("ollama", "--models", SOLO)
    coordinator = procs.coordinator()
    procs.agent(coordinator.url, "ollama", backend.url, "good-host")
    wait_models(coordinator.url, {SOLO: 1})
    close_code, _ = asyncio.run(_bad_host(coordinator.url, frame))
    assert close_code == code
    wait_models(coordinator.url, {SOLO: 1, "evil:latest": 0})
    assert ask(coordinator.url) == "ollama heard: hi"
    assert coordinator.popen is not None and coordinator.popen.poll() is None


def test_ctrl_c_exits_cleanly(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", SOLO)
    coordinator = procs.coordinator()
    agent = procs.agent(coordinator.url, "ollama", backend.url, "leaving-host")
    wait_models(coordinator.url, {SOLO: 1})
    agent.signal(signal.SIGINT)
    assert agent.popen is not None
    assert agent.popen.wait(10) == 0  # clean, and not held up (TimeoutExpired past the bound)
    assert agent.wait_notice("STOPPING=1")  # it said it was going
    wait_models(coordinator.url, {SOLO: 0})
