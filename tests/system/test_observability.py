"""Seeing the pool: pool status and Prometheus metrics counted against real traffic,
and `andy-host status` on a contributor's machine. (The dashboard in headless Chromium
is tests/coordinator/test_dashboard.py; ``chromium`` here serves the hostile-host tests.)"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import httpx
import pytest

from tests.harness.procs import ROOT, Processes, wait_models
from tests.harness.sse import chat_stream

MODEL = "m:latest"
ARTIFACTS = ROOT / "test-artifacts"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_pool_status_and_metrics_count_what_was_sent(procs: Processes) -> None:
    a = procs.fake("ollama", "--models", MODEL)
    b = procs.fake("ollama", "--models", f"{MODEL},other:latest")
    coordinator = procs.coordinator(env={"ANDY_HOST_COORDINATOR_ANON_PER_MINUTE": "1000"})
    procs.agent(coordinator.url, "ollama", a.url, "alpha")
    procs.agent(coordinator.url, "ollama", b.url, "beta", "--max-concurrency", "3")
    wait_models(coordinator.url, {MODEL: 2, "other:latest": 1})
    key = {"Authorization": f"Bearer {coordinator.key}"}
    for i in range(5):
        assert httpx.post(coordinator.url + "/v1/chat/completions",
                          json={"model": MODEL, "messages": [{"role": "user", "content": f"q {i}"}]}).status_code == 200
    for i in range(3):
        assert chat_stream(coordinator.url, MODEL, f"s {i}").outcome == "complete"
    assert httpx.post(coordinator.url + "/v1/chat/completions",
                      json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}).status_code == 404
    assert httpx.post(coordinator.url + "/v1/embeddings", json={"model": "other", "input": ["a", "b"]},
                      headers=key).status_code == 200

    status = httpx.get(coordinator.url + "/api/andy/pool_status", headers=key).json()
    assert status["total_hosts"] == 2 and status["active_hosts"] == 2 and status["total_models"] == 2
    assert status["in_flight"] == 0 and status["queued"] == 0
    assert sum(h["served"] for h in status["hosts"]) == 9  # 8 chats + 1 embedding job
    by_name = {h["name"]: h for h in status["hosts"]}
    assert by_name["beta"]["capacity"] == 3 and by_name["alpha"]["capacity"] == 2
    models = {m["name"]: m for m in status["models"]}
    assert models[MODEL]["hosts"] == 2 and models[MODEL]["capacity"] == 5 and models[MODEL]["queue"] == 0

    text = httpx.get(coordinator.url + "/metrics").text
    assert metric(text, "andy_requests_total", endpoint="chat", model=MODEL, status="200") == 8
    assert metric(text, "andy_requests_total", endpoint="chat", status="404") == 1
    assert metric(text, "andy_requests_total", endpoint="embeddings", model="other:latest", status="200") == 1
    assert metric(text, "andy_time_to_first_token_seconds_count", model=MODEL) == 8
    assert metric(text, "andy_request_duration_seconds_count", endpoint="chat", model=MODEL) == 8
    assert metric(text, "andy_completion_tokens_total", model=MODEL) == 8 * 4  # "ollama heard: q 0"
    assert metric(text, "andy_hosts", status="active") == 2
    assert metric(text, "andy_queue_depth") == 0


def test_metrics_access_is_configurable(procs: Processes) -> None:
    admin = procs.coordinator(env={"ANDY_HOST_COORDINATOR_METRICS_ACCESS": "admin",
                                   "ANDY_HOST_COORDINATOR_ADMIN_TOKEN": "adm"}, name="c-admin")
    assert httpx.get(admin.url + "/metrics").status_code == 401
    assert httpx.get(admin.url + "/metrics", headers={"Authorization": "Bearer adm"}).status_code == 200
    off = procs.coordinator(env={"ANDY_HOST_COORDINATOR_METRICS_ACCESS": "off"}, name="c-off",
                            db=procs.tmp / "off.db")
    assert httpx.get(off.url + "/metrics").status_code == 404


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: scripts/setup installs it (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={ARTIFACTS / 'chromium-profile'}", "--virtual-time-budget=4000"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_status_command_against_running_and_stopped_daemon(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", MODEL)
    coordinator = procs.coordinator()
    agent = procs.agent(coordinator.url, "ollama", backend.url, "my-box")
    wait_models(coordinator.url, {MODEL: 1})
    assert chat_stream(coordinator.url, MODEL, "count me").outcome == "complete"
    state = str(procs.tmp / "state")

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "andy_host.cli", "status", "--state-dir", state, "--name", "my-box"],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)

    running = status()
    assert running.returncode == 0, running.stderr
    assert f"connected to {coordinator.url}" in running.stdout
    assert "1 served" in running.stdout and "models shared: m:latest" in running.stdout
    coordinator.kill()
    agent.wait_disconnected()
    disconnected = status()
    assert "NOT connected" in disconnected.stdout
    agent.signal(signal.SIGINT)
    assert agent.popen is not None and agent.popen.wait(10) == 0
    stopped = status()
    assert stopped.returncode == 1
    assert "andy-host is not running" in stopped.stdout
