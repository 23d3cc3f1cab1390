"""Every websocket message round-trips, and malformed ones are rejected with a reason."""

from __future__ import annotations

import json

import pytest

from andy_host import protocol as p

HOST_MESSAGES: list[p.HostMessage] = [
    p.Hello(name="h", backend="ollama", models=[p.ModelInfo(name="a:latest", size=1, embed=True)], capacity=2,
            host_id="abc", token="t", hardware={"gpus": []}, jobs=["j1"]),
    p.Heartbeat(active=1, status="paused", reason="owner is gaming", loaded=["a:latest"], hardware={"x": 1}),
    p.Models(models=[p.ModelInfo(name="b:latest", context_length=8192)]),
    p.Chunk(id="j1", content="tok"),
    p.Done(id="j1", finish_reason="length", usage={"prompt_tokens": 3, "completion_tokens": 4}),
    p.Done(id="j3", usage={"completion_tokens": 2}, content="last words"),
    p.Done(id="j2", embeddings=[[0.5, -1.0]], usage={"prompt_tokens": 2}),
    p.JobError(id="j1", status=503, message="busy", code="x", retry_after=2.0),
]
COORDINATOR_MESSAGES: list[p.CoordinatorMessage] = [
    p.Welcome(host_id="abc", heartbeat_interval=10.0),
    p.Job(id="j1", kind="chat", model="a:latest", request={"messages": []}, deadline=30.0),
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
                deadline=12.5)
    assert json.loads(p.encode_job(job.id, job.kind, job.model, job.request, job.deadline)) == json.loads(p.encode(job))


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
        ('{"type": "hello", "protocol": 1, "name": "h", "backend": "x", "models": [], "capacity": 0}', "'capacity'"),
        ('{"type": "hello", "protocol": 1, "name": "h", "backend": "x", "models": [1], "capacity": 1}', "model"),
        ('{"type": "models", "models": "all"}', "'models'"),
    ],
)
def test_malformed_host_frames_are_rejected(frame: str, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.decode_host(frame)


def test_hosts_of_the_previous_protocol_are_still_accepted() -> None:
    """Version 1 hosts never put content in ``done``; the coordinator takes them."""
    hello = p.decode_host('{"type": "hello", "protocol": 1, "name": "old", "backend": "ollama", "models": [], '
                          '"capacity": 1}')
    assert isinstance(hello, p.Hello) and hello.protocol == 1
    done = p.decode_host('{"type": "done", "id": "j1", "finish_reason": "stop", "usage": {}}')
    assert isinstance(done, p.Done) and done.content == ""


def test_host_cannot_send_coordinator_messages() -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_host(p.encode(p.Cancel(id="j1")))
    with pytest.raises(p.ProtocolError):
        p.decode_coordinator('{"type": "job", "id": "j", "kind": "mine", "model": "m", "request": {}, "deadline": 1}')
