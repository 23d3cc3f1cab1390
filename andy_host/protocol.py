"""Every message that crosses the host websocket: typed, versioned, validated, no I/O.

Frames are JSON text objects with a ``type`` field. Host -> coordinator: ``hello``,
``heartbeat``, ``models``, ``chunk``, ``done``, ``error``. Coordinator -> host:
``welcome``, ``job``, ``cancel``. A frame that does not decode to a valid message
raises :class:`ProtocolError`; the coordinator closes that host's connection.

Jobs carry no client identity: no API key, no address.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

import orjson

PROTOCOL_VERSION = 2  # 2: ``done`` may carry the answer's last content
OLDEST_PROTOCOL = 1  # the oldest version of a host the coordinator still accepts
HOSTS_WS_PATH = "/api/andy/hosts/ws"  # where hosts connect, on the coordinator
MAX_ID_LEN = 64
MAX_NAME_LEN = 200
MAX_MODELS = 500
HOST_STATUSES = ("active", "paused", "draining", "backend_down")
FEATURE_CONTINUE = "continue"  # can continue a final assistant message (failover mid-stream)

JobKind = Literal["chat", "embed"]


class ProtocolError(ValueError):
    """A frame that is not a valid message; the text says what is wrong."""


@dataclass(slots=True)
class ModelInfo:
    name: str
    size: int | None = None
    quantization: str | None = None
    family: str | None = None
    context_length: int | None = None
    loaded: bool = False
    embed: bool = False


@dataclass(slots=True)
class Hello:
    name: str
    backend: str
    models: list[ModelInfo]
    capacity: int
    protocol: int = PROTOCOL_VERSION
    host_id: str | None = None
    token: str | None = None
    backend_version: str | None = None
    hardware: dict[str, Any] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    type: Literal["hello"] = "hello"


@dataclass(slots=True)
class Heartbeat:
    active: int
    status: str = "active"
    reason: str | None = None
    loaded: list[str] = field(default_factory=list)
    hardware: dict[str, Any] | None = None
    capacity: int | None = None  # set when it changed (config reload)
    type: Literal["heartbeat"] = "heartbeat"


@dataclass(slots=True)
class Models:
    models: list[ModelInfo]
    type: Literal["models"] = "models"


@dataclass(slots=True)
class Chunk:
    """Content of a job; ``tokens`` backend chunks that arrived together."""

    id: str
    content: str
    tokens: int = 1
    type: Literal["chunk"] = "chunk"


@dataclass(slots=True)
class Done:
    """The end of a job. ``content`` is text that arrived together with the end (a
    short answer whole, or the last tokens): one frame instead of a chunk and a done."""

    id: str
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)
    embeddings: list[list[float]] | None = None
    content: str = ""
    type: Literal["done"] = "done"


@dataclass(slots=True)
class JobError:
    id: str
    status: int
    message: str
    code: str | None = None
    retry_after: float | None = None
    type: Literal["error"] = "error"


@dataclass(slots=True)
class Welcome:
    host_id: str
    heartbeat_interval: float
    protocol: int = PROTOCOL_VERSION
    type: Literal["welcome"] = "welcome"


@dataclass(slots=True)
class Job:
    id: str
    kind: JobKind
    model: str
    request: dict[str, Any]
    deadline: float
    type: Literal["job"] = "job"


@dataclass(slots=True)
class Cancel:
    id: str
    type: Literal["cancel"] = "cancel"


HostMessage = Hello | Heartbeat | Models | Chunk | Done | JobError
CoordinatorMessage = Welcome | Job | Cancel
Message = HostMessage | CoordinatorMessage


def _plain(value: Any) -> Any:
    if isinstance(value, ModelInfo):
        return {f.name: getattr(value, f.name) for f in fields(ModelInfo)}
    if isinstance(value, list) and value and isinstance(value[0], ModelInfo):
        return [_plain(v) for v in value]
    return value


def encode(message: Message) -> str:
    """A message as one JSON text frame (dataclasses.asdict is too slow for the hot path)."""
    return orjson.dumps({f.name: _plain(getattr(message, f.name)) for f in fields(message)}).decode()


def encode_chunk(job_id: str, content: str, tokens: int = 1) -> str:
    """Fast path for the most frequent frame (same wire form as ``encode(Chunk)``)."""
    return orjson.dumps({"id": job_id, "content": content, "tokens": tokens, "type": "chunk"}).decode()


def encode_job(job_id: str, kind: JobKind, model: str, request: dict[str, Any], deadline: float) -> str:
    """Fast path for the job frame (same wire form as ``encode(Job)``)."""
    return orjson.dumps(
        {"id": job_id, "kind": kind, "model": model, "request": request, "deadline": deadline, "type": "job"}
    ).decode()


# --- validation helpers -----------------------------------------------------------


def _str(obj: dict[str, Any], key: str, *, max_len: int = MAX_NAME_LEN, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ProtocolError(f"field {key!r} must be a non-empty string of at most {max_len} chars")
    return value


def _int(obj: dict[str, Any], key: str, *, lo: int, hi: int, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"field {key!r} must be an integer in [{lo}, {hi}]")
    return value


def _num(obj: dict[str, Any], key: str, *, lo: float, hi: float, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"field {key!r} must be a number in [{lo}, {hi}]")
    return float(value)


def _dict(obj: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"field {key!r} must be an object")
    return value


def _models(obj: dict[str, Any]) -> list[ModelInfo]:
    raw = obj.get("models")
    if not isinstance(raw, list) or len(raw) > MAX_MODELS:
        raise ProtocolError(f"field 'models' must be a list of at most {MAX_MODELS} models")
    models = []
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError("each model must be an object")
        models.append(
            ModelInfo(
                name=_str(item, "name"),
                size=_int(item, "size", lo=0, hi=2**62, optional=True),
                quantization=_str(item, "quantization", optional=True),
                family=_str(item, "family", optional=True),
                context_length=_int(item, "context_length", lo=0, hi=2**31, optional=True),
                loaded=bool(item.get("loaded", False)),
                embed=bool(item.get("embed", False)),
            )
        )
    return models


def _str_list(obj: dict[str, Any], key: str, limit: int = MAX_MODELS) -> list[str]:
    raw = obj.get(key, [])
    if not isinstance(raw, list) or len(raw) > limit or not all(
        isinstance(x, str) and 0 < len(x) <= MAX_NAME_LEN for x in raw
    ):
        raise ProtocolError(f"field {key!r} must be a list of strings")
    return list(raw)


def _usage(obj: dict[str, Any]) -> dict[str, int]:
    raw = obj.get("usage") or {}
    if not isinstance(raw, dict):
        raise ProtocolError("field 'usage' must be an object")
    usage: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens"):
        if key in raw:
            usage[key] = _int(raw, key, lo=0, hi=2**31)
    return usage


def _embeddings(obj: dict[str, Any]) -> list[list[float]] | None:
    raw = obj.get("embeddings")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(vec, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec)
        for vec in raw
    ):
        raise ProtocolError("field 'embeddings' must be a list of number lists")
    return raw


def _decode_host(obj: dict[str, Any], kind: str) -> HostMessage:
    if kind == "chunk":
        content = obj.get("content")
        if not isinstance(content, str):
            raise ProtocolError("field 'content' must be a string")
        return Chunk(
            id=_str(obj, "id", max_len=MAX_ID_LEN),
            content=content,
            tokens=_int(obj, "tokens", lo=0, hi=1_000_000, optional=True) or 1,
        )
    if kind == "done":
        reason = obj.get("finish_reason", "stop")
        if reason not in ("stop", "length"):
            raise ProtocolError("field 'finish_reason' must be 'stop' or 'length'")
        content = obj.get("content", "")
        if not isinstance(content, str):
            raise ProtocolError("field 'content' must be a string")
        return Done(
            id=_str(obj, "id", max_len=MAX_ID_LEN),
            finish_reason=reason,
            usage=_usage(obj),
            embeddings=_embeddings(obj),
            content=content,
        )
    if kind == "error":
        message = obj.get("message")
        if not isinstance(message, str):
            raise ProtocolError("field 'message' must be a string")
        return JobError(
            id=_str(obj, "id", max_len=MAX_ID_LEN),
            status=_int(obj, "status", lo=400, hi=599),
            message=message[:2000],
            code=_str(obj, "code", optional=True),
            retry_after=_num(obj, "retry_after", lo=0, hi=86400, optional=True),
        )
    if kind == "heartbeat":
        status = obj.get("status", "active")
        if status not in HOST_STATUSES:
            raise ProtocolError(f"field 'status' must be one of {HOST_STATUSES}")
        return Heartbeat(
            active=_int(obj, "active", lo=0, hi=100_000),
            status=status,
            reason=_str(obj, "reason", optional=True),
            loaded=_str_list(obj, "loaded"),
            hardware=_dict(obj, "hardware", optional=True),
            capacity=_int(obj, "capacity", lo=1, hi=1024, optional=True),
        )
    if kind == "models":
        return Models(models=_models(obj))
    if kind == "hello":
        protocol = _int(obj, "protocol", lo=1, hi=1000)
        if not OLDEST_PROTOCOL <= protocol <= PROTOCOL_VERSION:
            newer = "the coordinator" if protocol > PROTOCOL_VERSION else "andy-host on this host"
            raise ProtocolError(
                f"protocol version {protocol} is not supported (coordinator speaks {OLDEST_PROTOCOL} to "
                f"{PROTOCOL_VERSION}); upgrade {newer}"
            )
        return Hello(
            protocol=protocol,
            name=_str(obj, "name"),
            backend=_str(obj, "backend"),
            backend_version=_str(obj, "backend_version", optional=True),
            models=_models(obj),
            capacity=_int(obj, "capacity", lo=1, hi=1024),
            host_id=_str(obj, "host_id", max_len=MAX_ID_LEN, optional=True),
            token=_str(obj, "token", max_len=512, optional=True),
            hardware=_dict(obj, "hardware", optional=True) or {},
            jobs=_str_list(obj, "jobs", limit=1024),
            features=_str_list(obj, "features", limit=32),
        )
    raise ProtocolError(f"unknown host message type {kind!r}")


def _decode_coordinator(obj: dict[str, Any], kind: str) -> CoordinatorMessage:
    if kind == "job":
        job_kind = obj.get("kind")
        if job_kind not in ("chat", "embed"):
            raise ProtocolError("field 'kind' must be 'chat' or 'embed'")
        return Job(
            id=_str(obj, "id", max_len=MAX_ID_LEN),
            kind=job_kind,
            model=_str(obj, "model"),
            request=_dict(obj, "request"),
            deadline=_num(obj, "deadline", lo=0, hi=86400),
        )
    if kind == "cancel":
        return Cancel(id=_str(obj, "id", max_len=MAX_ID_LEN))
    if kind == "welcome":
        return Welcome(
            protocol=_int(obj, "protocol", lo=1, hi=1000),
            host_id=_str(obj, "host_id", max_len=MAX_ID_LEN),
            heartbeat_interval=_num(obj, "heartbeat_interval", lo=0.01, hi=3600),
        )
    raise ProtocolError(f"unknown coordinator message type {kind!r}")


def _load(text: str | bytes) -> tuple[dict[str, Any], str]:
    try:
        obj = orjson.loads(text)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no 'type'")
    return obj, kind


def decode_host(text: str | bytes) -> HostMessage:
    """Decode and validate a frame sent by a host (untrusted input)."""
    obj, kind = _load(text)
    return _decode_host(obj, kind)


def decode_coordinator(text: str | bytes) -> CoordinatorMessage:
    """Decode and validate a frame sent by the coordinator."""
    obj, kind = _load(text)
    return _decode_coordinator(obj, kind)
