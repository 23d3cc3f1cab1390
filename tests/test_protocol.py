"""Every websocket message round-trips, and malformed ones are rejected with a reason."""

from __future__ import annotations

import json

import pytest

from andy_host import protocol as p
from andy_host.errors import ProtocolError, VersionError

HOST_MESSAGES: list[p.HostMessage] = [
    p.Hello(name="h", backend="ollama", models=[p.ModelInfo(name="a:latest", size=1, embed=True)], capacity=2,
            host_id="abc", token="t", secret="s", jobs=["j1"], features=["continue"],
            hardware=p.Hardware(gpus=[p.GpuReading(index=0, name="NVIDIA H100", memory_total=80 * 2**30,
                                                   memory_used=2**30, utilization_gpu=40, temperature=61,
                                                   mig_mode=True, mig_instances=[p.MigInstance("MIG-1", 10, 1)])],
                                host=p.HostReading(cpu="x", cores=8, os="Linux", load_1m=0.5, ram_total=1,
                                                   ram_available=1))),
    p.Heartbeat(active=1, status="paused", reason="owner is gaming", loaded=["a:latest"], pause=["vram_foreign"],
                hardware=p.Hardware(), features=["continue"]),
    p.Models(models=[p.ModelInfo(name="b:latest", context_length=8192)]),
    p.Models(models=[p.ModelInfo(name="c:latest", context_length=131072, served_context=8192)]),
    p.Chunk(id="j1", content="tok"),
    p.Done(id="j1", finish_reason="length", usage={"prompt_tokens": 3, "completion_tokens": 4}),
    p.Done(id="j3", usage={"completion_tokens": 2}, content="last words"),
    p.Done(id="j2", embeddings=[[0.5, -1.0]], usage={"prompt_tokens": 2}),
    p.JobError(id="j1", status=503, message="busy", code="x", retry_after=2.0),
    p.JobError(id="j6", status=400, message="too long", code="context_length_exceeded", prompt_tokens=9001,
               context_tokens=8192),
    p.Chunk(id="j4", content="Hi", logprobs=[p.TokenLogprob("Hi", -0.5, [("Hi", -0.5), ("Hey", -1.5)])]),
    p.Done(id="j5", finish_reason="tool_calls", tool_calls=[p.ToolCall("call_1", "get_weather", '{"city":"Oslo"}')],
           logprobs=[p.TokenLogprob(".", 0.0)]),
]
COORDINATOR_MESSAGES: list[p.CoordinatorMessage] = [
    p.Welcome(host_id="abc", heartbeat_interval=10.0),
    p.Welcome(host_id="abc", heartbeat_interval=10.0, secret="andy_hs_x", max_frame_bytes=8 * 2**20),
    p.Job(id="j1", kind="chat", model="a:latest", request={"messages": []}, budget=30.0),
    p.Job(id="j2", kind="complete", model="a:latest", request={"prompt": "Once"}, budget=3.0, trace="req_1"),
    p.Cancel(id="j1"),
]


@pytest.mark.parametrize("message", HOST_MESSAGES, ids=lambda m: m.type)
def test_host_messages_round_trip(message: p.HostMessage) -> None:
    assert p.decode_host(p.encode(message)) == message


@pytest.mark.parametrize("message", COORDINATOR_MESSAGES, ids=lambda m: m.type)
def test_coordinator_messages_round_trip(message: p.CoordinatorMessage) -> None:
    assert p.decode_coordinator(p.encode(message)) == message


def test_fast_job_encoding_matches() -> None:
    job = p.Job(id="j2", kind="chat", model="m:latest", request={"messages": [{"role": "user", "content": "é"}]},
                budget=12.5)
    assert json.loads(p.encode_job(job.id, job.kind, job.model, job.request, job.budget)) == json.loads(p.encode(job))


def test_fast_chunk_encoding_matches() -> None:
    text = 'quote " and \\ and ünïcode\n'
    assert json.loads(p.encode_chunk("j9", text)) == json.loads(p.encode(p.Chunk(id="j9", content=text)))


@pytest.mark.parametrize(
    "frame, reason",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"id": "j1"}', "no 'type'"),
        ('{"type": "launch"}', "unknown host message"),
        ('{"type": "chunk", "id": "j1", "content": 5}', "'content'"),
        ('{"type": "chunk", "id": "' + "x" * 100 + '", "content": ""}', "'id'"),
        ('{"type": "done", "id": "j1", "finish_reason": "exploded"}', "finish_reason"),
        ('{"type": "done", "id": "j1", "usage": {"completion_tokens": -1}}', "completion_tokens"),
        ('{"type": "done", "id": "j1", "embeddings": [["a"]]}', "embeddings"),
        ('{"type": "done", "id": "j1", "content": ["x"]}', "'content'"),
        ('{"type": "error", "id": "j1", "status": 200, "message": "x"}', "'status'"),
        ('{"type": "heartbeat", "active": 0, "status": "asleep"}', "'status'"),
        ('{"type": "heartbeat", "active": true}', "'active'"),
        ('{"type": "hello", "protocol": 99, "name": "h", "backend": "x", "models": [], "capacity": 1}', "protocol version"),
        ('{"type": "hello", "protocol": 0, "name": "h", "backend": "x", "models": [], "capacity": 1}', "'protocol'"),
        ('{"type": "hello", "protocol": 3, "name": "h", "backend": "x", "models": [], "capacity": 0}', "'capacity'"),
        ('{"type": "hello", "protocol": 3, "name": "h", "backend": "x", "models": [1], "capacity": 1}', "model"),
        ('{"type": "models", "models": "all"}', "'models'"),
        ('{"type": "heartbeat", "active": 0, "hardware": {"gpus": 5}}', "'gpus'"),
        ('{"type": "heartbeat", "active": 0, "hardware": [1]}', "'hardware'"),
        ('{"type": "heartbeat", "active": 0, "hardware": {"gpus": [' + '{},' * 16 + '{}]}}', "'gpus'"),
        ('{"type": "done", "id": "j1", "embeddings": [[1e300]]}', "float32"),
        ('{"type": "done", "id": "j1", "embeddings": [[]]}', "float32"),
        ('{"type": "models", "models": [{"name": "m", "served_context": 0}]}', "'served_context'"),
        ('{"type": "models", "models": [{"name": "m", "served_context": 2147483648}]}', "'served_context'"),
        ('{"type": "models", "models": [{"name": "m", "served_context": "8192"}]}', "'served_context'"),
        ('{"type": "error", "id": "j1", "status": 400, "message": "x", "prompt_tokens": -1}', "'prompt_tokens'"),
        ('{"type": "error", "id": "j1", "status": 400, "message": "x", "context_tokens": 1.5}', "'context_tokens'"),
    ],
)
def test_malformed_host_frames_are_rejected(frame: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        p.decode_host(frame)


def test_hardware_is_clamped_and_cut_never_free() -> None:
    """Hostile readings become typed, bounded values: nothing nested or oversized survives."""
    deep: object = "x"
    for _ in range(200):
        deep = {"a": deep}
    raw = {"type": "heartbeat", "active": 0, "pause": ["gpu_hot", "made_up_code"], "hardware": {
        "gpus": [{"name": "<img src=x onerror=alert(1)>" * 50, "utilization_gpu": 10**9, "temperature": "hot",
                  "memory_total": -5, "power_draw_w": float("1e308"), "uuid": deep, "extra": deep,
                  "mig_instances": [{"uuid": 1}]}],
        "host": {"cpu": deep, "cores": 10**12}, "nvml": ["no"], "junk": "x" * 10000}}
    beat = p.decode_host(json.dumps(raw))
    assert isinstance(beat, p.Heartbeat) and beat.hardware is not None
    gpu = beat.hardware.gpus[0]
    assert len(gpu.name) == 120 and gpu.utilization_gpu == 100 and gpu.temperature is None
    assert gpu.memory_total == 0 and gpu.power_draw_w == 100_000 and gpu.uuid is None
    assert gpu.mig_instances == [p.MigInstance(None, None, None)]
    assert beat.hardware.host == p.HostReading(cpu="", cores=65_536)
    assert beat.hardware.nvml == "ok"
    assert beat.pause == ["gpu_hot"]  # codes only, from the fixed list
    assert len(p.encode(beat)) < 2000


def test_unsupported_protocol_is_a_version_error() -> None:
    with pytest.raises(VersionError):
        p.decode_host('{"type": "hello", "protocol": 99, "name": "h", "backend": "x", "models": [], "capacity": 1}')


def test_hosts_of_older_protocols_are_refused() -> None:
    """Protocol 1 and 2 hosts had no busy heartbeats (a frozen one could not be told) and
    no host secret: they are told to upgrade."""
    for version in (1, 2):
        with pytest.raises(VersionError, match="upgrade andy-host on this host"):
            p.decode_host(f'{{"type": "hello", "protocol": {version}, "name": "old", "backend": "ollama", '
                          '"models": [], "capacity": 1}')
    done = p.decode_host('{"type": "done", "id": "j1", "finish_reason": "stop", "usage": {}}')
    assert isinstance(done, p.Done) and done.content == ""


def test_host_cannot_send_coordinator_messages() -> None:
    with pytest.raises(ProtocolError):
        p.decode_host(p.encode(p.Cancel(id="j1")))
    with pytest.raises(ProtocolError):
        p.decode_coordinator('{"type": "job", "id": "j", "kind": "mine", "model": "m", "request": {}, "budget": 1}')


def test_a_request_reads_back_as_it_was_built() -> None:
    chat = p.ChatRequest(
        messages=[p.Message("user", "weather?"), p.Message("assistant", "", tool_calls=[p.ToolCall("c1", "w", "{}")]),
                  p.Message("tool", "sunny", tool_call_id="c1", name="w")],
        tools=[p.Tool("w", "weather", {"type": "object"})], tool_choice="required", response_format="json_schema",
        json_schema={"type": "object"}, logprobs=True, top_logprobs=2, stream=False, temperature=0.0)
    assert p.read_request("chat", p.request_dict(chat)) == chat
    completion = p.CompletionRequest(prompt="Once upon", max_tokens=16, stop=["\n"])
    assert p.read_request("complete", p.request_dict(completion)) == completion


@pytest.mark.parametrize(("kind", "raw", "reason"), [
    ("chat", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("chat", {"messages": [{"role": "user"}], "tool_choice": "maybe"}, "tool_choice"),
    ("chat", {"messages": [{"role": "user"}], "json_schema": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, "nests"),
    ("complete", {"prompt": 3}, "'prompt'"),
    ("embed", {"input": [""]}, "non-empty"),
    ("rerank", {}, "unknown job kind"),
])
def test_a_malformed_request_is_refused(kind: str, raw: dict[str, object], reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        p.read_request(kind, raw)
