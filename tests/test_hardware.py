"""Hardware probing and the owner's controls. No GPU here: NVML is faked at the pynvml
boundary (tests/harness/fakes/nvml/pynvml.py) from fixture files of real card models
(tests/harness/fixtures/gpus/; their "source" field says where the values came from)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from andy_host.agent import hardware
from andy_host.agent.controls import Pause, pause_reasons, shared
from andy_host.config import ControlsConfig
from tests.harness.procs import ROOT, Proc, Processes, get_json, until, wait_models
from tests.harness.sse import chat_stream

FIXTURES = ROOT / "tests" / "harness" / "fixtures" / "gpus"
FAKE_NVML = ROOT / "tests" / "harness" / "fakes" / "nvml"
MODEL = "m:latest"


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("fake_pynvml", FAKE_NVML / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(hardware, "pynvml", module)
    return module


def probe_with(fixture: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("ANDY_HOST_TEST_NVML", str(FIXTURES / fixture))
    probe = hardware.HardwareProbe()
    try:
        return probe.sample()
    finally:
        probe.close()


def test_h100(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = probe_with("h100-80gb.json", monkeypatch)
    (gpu,) = sample["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["memory_total"] == 81559 * 2**20
    assert gpu["memory_free"] == gpu["memory_total"] - gpu["memory_used"]
    assert gpu["power_limit_w"] == 700.0 and gpu["cuda_driver_version"] == "12.4" and gpu["mig_mode"] is False
    assert sample["host"]["cores"] >= 1 and sample["host"]["ram_total"] > 0


def test_eight_a100s_and_mig(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [g["index"] for g in probe_with("8x-a100-80gb.json", monkeypatch)["gpus"]] == list(range(8))
    (mig,) = probe_with("a100-mig.json", monkeypatch)["gpus"]
    assert mig["mig_mode"] is True and len(mig["mig_instances"]) == 4
    assert all(i["uuid"].startswith("MIG-") for i in mig["mig_instances"])


def test_consumer_card_reports_other_processes_memory(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (gpu,) = probe_with("rtx-4090.json", monkeypatch)["gpus"]
    assert gpu["other_processes_memory"] == 900 * 2**20  # pid 4242 is not ours


def test_no_driver_is_a_cpu_host(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    sample = probe_with("no-driver.json", monkeypatch)
    assert sample["gpus"] == [] and "CPU host" in sample["nvml"]


def test_gpu_lost_mid_run_is_reported_not_raised(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    live = tmp_path / "gpu.json"
    shutil.copy(FIXTURES / "rtx-4090.json", live)
    monkeypatch.setenv("ANDY_HOST_TEST_NVML", str(live))
    probe = hardware.HardwareProbe()
    assert "error" not in probe.sample()["gpus"][0]
    live.write_text((FIXTURES / "gpu-lost.json").read_text())
    lost = probe.sample()["gpus"][0]
    assert lost["error"] == "GPU is lost"
    assert pause_reasons(ControlsConfig(), {"gpus": [lost]}) == [Pause("gpu_error", "GPU 0 in error: GPU is lost")]
    probe.close()


def test_controls_unit() -> None:
    controls = ControlsConfig(share_models=["llama3*", "sweaterdog/*"], deny_models=["*:70b"])
    assert shared("llama3.2:latest", controls) and shared("sweaterdog/andy-4:latest", controls)
    assert not shared("llama3:70b", controls) and not shared("mistral:latest", controls)
    night = ControlsConfig(active_hours="22:00-08:00")
    assert pause_reasons(night, {}, dt.datetime(2026, 1, 1, 23, 30)) == []
    assert pause_reasons(night, {}, dt.datetime(2026, 1, 1, 7, 59)) == []
    assert pause_reasons(night, {}, dt.datetime(2026, 1, 1, 12, 0)) == [
        Pause("active_hours", "outside active hours 22:00-08:00")
    ]


@pytest.mark.timeout(60)  # sampling never hangs; how fast it is belongs in a benchmark
def test_sampling_is_cheap(fake_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDY_HOST_TEST_NVML", str(FIXTURES / "8x-a100-80gb.json"))
    probe = hardware.HardwareProbe()
    samples = [probe.sample() for _ in range(20)]
    probe.close()
    assert all(len(s["gpus"]) == 8 for s in samples)  # each a whole reading of the 8 (fake) GPUs


def host_status(coordinator: Proc) -> dict[str, Any]:
    status = httpx.get(coordinator.url + "/api/andy/pool_status",
                       headers={"Authorization": f"Bearer {coordinator.key}"}).json()
    (host,) = status["hosts"]
    return host


def wait_status(coordinator: Proc, wanted: str, timeout: float = 20) -> dict[str, Any]:
    """The host once its status is ``wanted``. A host that drops its link and reconnects
    meanwhile (a heartbeat missed on a loaded machine: the tests' heartbeats are short)
    is waited for, not an error."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = httpx.get(coordinator.url + "/api/andy/pool_status",
                         headers={"Authorization": f"Bearer {coordinator.key}"}).json()["hosts"]
        if len(seen) == 1 and seen[0]["status"] == wanted:
            return dict(seen[0])
        time.sleep(0.1)
    raise AssertionError(f"the host never reached {wanted}: {seen}")


CONTROL_CASES = [
    ("max_temperature", "80", lambda g: g.update(temperature=91), "GPU too hot"),
    ("min_free_vram_mib", "4096", lambda g: g.update(memory_used=g["memory_total"] - 1024 * 2**20), "GPU memory low"),
    ("max_foreign_vram_mib", "2048", lambda g: g["processes"].append({"pid": 777, "used_memory": 8 * 2**30}),
     "owner using the GPU"),
]


@pytest.mark.parametrize("option, value, change, reason", CONTROL_CASES, ids=[c[0] for c in CONTROL_CASES])
def test_each_control_pauses_and_resumes_a_running_host(procs: Processes, option: str, value: str,
                                                        change: Any, reason: str) -> None:
    live = procs.tmp / "gpu.json"
    original = json.loads((FIXTURES / "rtx-4090.json").read_text())
    live.write_text(json.dumps(original))
    backend = procs.fake("ollama", "--models", MODEL, "--token-delay", "0.05")
    coordinator = procs.coordinator()
    env = {"ANDY_HOST_TEST_NVML": str(live), "PYTHONPATH": str(FAKE_NVML), "ANDY_HOST_CONTROLS_CHECK_INTERVAL": "0.2"}
    agent = procs.agent(coordinator.url, "ollama", backend.url, "owner-box", f"--{option.replace('_', '-')}", value,
                        env=env)
    wait_models(coordinator.url, {MODEL: 1})
    assert host_status(coordinator)["status"] == "active"
    gpus = host_status(coordinator)
    assert gpus["name"] == "owner-box"
    # a job in flight when the pause starts still finishes
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        running = ex.submit(chat_stream, coordinator.url, MODEL, "in flight " + "w " * 20)
        until(lambda: get_json(coordinator.url + "/health")["in_flight"] >= 1, 20, "the job running on the host")
        changed = json.loads(live.read_text())
        change(changed["gpus"][0])
        live.write_text(json.dumps(changed))
        paused = wait_status(coordinator, "paused")
        assert paused["pause"] == [reason]  # in the coordinator's words: a host's own text is never shown
        assert running.result(timeout=20).outcome == "complete"
    refused = chat_stream(coordinator.url, MODEL, "while paused")
    assert refused.status == 503  # the only host is paused: no job is sent to it
    agent.wait_event("controls.paused")
    live.write_text(json.dumps(original))
    wait_status(coordinator, "active")
    agent.wait_event("controls.resumed")
    assert chat_stream(coordinator.url, MODEL, "resumed").outcome == "complete"


def test_active_hours_pause_and_model_lists_through_reload(procs: Processes) -> None:
    backend = procs.fake("ollama", "--models", f"{MODEL},llama3:70b,sweaterdog/andy-4:latest")
    coordinator = procs.coordinator()
    now = dt.datetime.now()
    outside = f"{(now + dt.timedelta(hours=2)):%H:%M}-{(now + dt.timedelta(hours=3)):%H:%M}"
    config = procs.tmp / "host.toml"
    config.write_text(f'[controls]\nactive_hours = "{outside}"\ndeny_models = ["*:70b"]\n')
    env = {"ANDY_HOST_TEST_NVML": str(FIXTURES / "no-driver.json"), "PYTHONPATH": str(FAKE_NVML),
           "ANDY_HOST_CONTROLS_CHECK_INTERVAL": "0.2"}
    agent = procs.agent(coordinator.url, "ollama", backend.url, "night-owl", "--config", str(config), env=env)
    wait_models(coordinator.url, {MODEL: 1, "sweaterdog/andy-4:latest": 1, "llama3:70b": 0})
    assert wait_status(coordinator, "paused")["pause"] == ["outside its owner's hours"]
    inside = f"{(now - dt.timedelta(hours=1)):%H:%M}-{(now + dt.timedelta(hours=1)):%H:%M}"
    config.write_text(f'[controls]\nactive_hours = "{inside}"\nshare_models = ["sweaterdog/*"]\n')
    agent.signal(__import__("signal").SIGHUP)
    wait_status(coordinator, "active")
    wait_models(coordinator.url, {MODEL: 0, "sweaterdog/andy-4:latest": 1})
    assert chat_stream(coordinator.url, "andy-4", "late night").outcome == "complete"


def test_probe_command(tmp_path: Path) -> None:
    env = {**__import__("os").environ, "ANDY_HOST_TEST_NVML": str(FIXTURES / "a100-mig.json"),
           "PYTHONPATH": f"{FAKE_NVML}:{ROOT}"}
    result = subprocess.run([sys.executable, "-m", "andy_host.cli", "probe", "--json", "--backend", "ollama",
                             "--backend-url", "http://127.0.0.1:9"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1  # the backend is not reachable
    report = json.loads(result.stdout)
    assert report["gpus"][0]["mig_mode"] is True
    assert report["backend"]["error"].startswith("Ollama is not reachable at http://127.0.0.1:9")
    assert "ollama serve" in report["backend"]["error"]


def probe_cli(fixture: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``andy-host probe`` with NVML faked from ``fixture``, no config file and no ANDY_HOST_* settings."""
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANDY_HOST_")}
    return subprocess.run([sys.executable, "-m", "andy_host.cli", "probe", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, "ANDY_HOST_TEST_NVML": str(FIXTURES / fixture),
                                           "PYTHONPATH": f"{FAKE_NVML}:{ROOT}", "COLUMNS": "200", **env})


def test_probe_on_a_cpu_host_says_it_would_share_the_cpu_through_llama_cpp(tmp_path: Path) -> None:
    nothing = ["--backend", "ollama", "--backend-url", "http://127.0.0.1:9"]
    report = json.loads(probe_cli("no-driver.json", "--json", *nothing, XDG_CONFIG_HOME=str(tmp_path)).stdout)
    cpu = report["cpu_only"]
    assert cpu["cores"] == report["host"]["cores"] >= 1 and cpu["ram_total"] == report["host"]["ram_total"] > 0
    assert cpu["join"] == "andy-host join --coordinator URL --backend llamacpp --managed --model smollm2-135m"
    text = probe_cli("no-driver.json", *nothing, XDG_CONFIG_HOME=str(tmp_path))
    assert text.returncode == 1  # no backend reachable
    gib = f"{report['host']['ram_total'] / 2**30:.1f} GiB RAM"
    assert f"this machine would share its CPU ({cpu['cores']} cores, {gib}) through llama.cpp" in text.stdout
    assert f"then share it: {cpu['join']}" in text.stdout
    assert "see what that would share: andy-host probe --backend llamacpp --managed --model smollm2-135m" in text.stdout
    gpu = json.loads(probe_cli("rtx-4090.json", "--json", *nothing, XDG_CONFIG_HOME=str(tmp_path)).stdout)
    assert gpu["cpu_only"] is None and gpu["gpus"]


def test_probe_managed_describes_the_llama_server_join_would_start(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\necho 'version: 4242 (0123abc)'\necho 'built with cc for x86_64-linux-gnu'\n")
    binary.chmod(0o755)
    model = tmp_path / "tiny-q4.gguf"
    model.write_bytes(b"GGUF" + bytes(1020))
    managed = ["--backend", "llamacpp", "--managed", "--model", str(model)]
    env = {"XDG_CONFIG_HOME": str(tmp_path), "ANDY_HOST_BACKEND_LLAMA_SERVER": str(binary)}
    result = probe_cli("no-driver.json", "--json", *managed, **env)
    assert result.returncode == 0, result.stdout + result.stderr  # ready to join, though nothing runs
    report = json.loads(result.stdout)
    backend = report["backend"]
    assert (backend["managed"], backend["ready"], backend["reachable"], backend["error"]) == (True, True, False, None)
    assert backend["llama_server"] == str(binary) and backend["version"] == "version: 4242 (0123abc)"
    assert backend["model_file"] == str(model) and backend["model_source"] == "file"
    assert [(m["name"], m["size"], m["shared"]) for m in report["models"]] == [("tiny-q4:latest", 1024, True)]
    assert report["cpu_only"]["join"].endswith(f"--backend llamacpp --managed --model {model}")
    text = probe_cli("no-driver.json", *managed, **env)
    assert text.returncode == 0, text.stdout + text.stderr
    assert f"join --managed would start {binary} (version: 4242 (0123abc)) with {model}" in text.stdout
    assert "probe starts nothing" in text.stdout and "through llama.cpp" in text.stdout
    assert "tiny-q4:latest" in text.stdout and "see what that would share" not in text.stdout
    denied = json.loads(probe_cli("no-driver.json", "--json", *managed, **env,
                                  ANDY_HOST_CONTROLS_DENY_MODELS="tiny*").stdout)
    assert denied["models"][0]["shared"] is False  # the owner's controls apply, as in join
    # what is missing, with the fix, and exit 1
    gone = probe_cli("no-driver.json", "--json", *managed, **{**env, "ANDY_HOST_BACKEND_LLAMA_SERVER": "/nonexistent"})
    assert gone.returncode == 1
    assert "llama-server was not found" in json.loads(gone.stdout)["backend"]["error"]
    assert "andy_host.tools.llama_build" in json.loads(gone.stdout)["backend"]["error"]
    no_model = probe_cli("no-driver.json", "--json", "--backend", "llamacpp", "--managed", "--model",
                         str(tmp_path / "missing.gguf"), **env)
    assert no_model.returncode == 1 and "does not exist" in json.loads(no_model.stdout)["backend"]["error"]
    # --managed is join's flag, with join's rule
    wrong = probe_cli("no-driver.json", "--managed", "--model", str(model), **env)
    assert wrong.returncode == 2 and "needs backend.kind = 'llamacpp'" in wrong.stderr
