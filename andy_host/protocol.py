"""Every message that crosses the host websocket: typed, versioned, validated, no I/O.

Frames are JSON text objects with a ``type`` field. Host -> coordinator: ``hello``,
``heartbeat``, ``models``, ``chunk``, ``done``, ``error``. Coordinator -> host:
``welcome``, ``job``, ``cancel``. A frame that does not decode to a valid message
raises :class:`ProtocolError`; the coordinator closes that host's connection.

Every host frame is hostile input: values are typed and bounded here, at decode.
Hardware readings are fixed records (numbers clamped to their range, strings cut to
their length, lists bounded, unknown keys dropped), never free nesting; pause reasons
travel as codes from a fixed list, so nothing a host writes reaches a page as text.

Jobs carry no client identity: no API key, no address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

import orjson

from andy_host.errors import ProtocolError, VersionError

# 2: ``done`` may carry the answer's last content.
# 3: hosts send a heartbeat every BUSY_HEARTBEAT seconds while they hold jobs (a silent
#    one is frozen); welcome issues a host secret and says the frame limit; hello
#    proves its id with that secret; heartbeats carry pause reasons as codes.
PROTOCOL_VERSION = 3
# The oldest version of a host the coordinator accepts: 3, because older hosts could
# opt out of the busy heartbeats that tell a frozen host, and had no host secret.
OLDEST_PROTOCOL = 3
HOSTS_WS_PATH = "/api/andy/hosts/ws"  # where hosts connect, on the coordinator
MAX_ID_LEN = 64
MAX_NAME_LEN = 200
MAX_SECRET_LEN = 128
MAX_MODELS = 500
MAX_FEATURES = 32
MAX_GPUS = 16
MAX_MIG = 8
MAX_EMBED_DIM = 65_536
MAX_EMBEDDINGS = 2048
FLOAT32_MAX = 3.4028234663852886e38
HOST_STATUSES = ("active", "paused", "draining", "backend_down")
FEATURE_CONTINUE = "continue"  # can continue a final assistant message (failover mid-stream)
MAX_FRAME_CEILING = 64 * 1024 * 1024  # the largest frame limit a coordinator may set
BUSY_HEARTBEAT = 1.0  # seconds between heartbeats while a host holds jobs (protocol 3)

# Websocket close codes of refusals (4000-4999 are the application's). Fatal ones end
# the agent with EXIT_REFUSED: retrying cannot help until a person acts.
CLOSE_TOKEN_REFUSED = 4001  # token unknown, revoked, or needed
CLOSE_ID_REFUSED = 4002  # the host id belongs to another credential
CLOSE_PROTOCOL = 4003  # protocol version not supported
CLOSE_BANNED = 4004
CLOSE_KICKED = 4005  # kicked by the admin for a while: retry later
CLOSE_FULL = 4006  # too many hosts from this address, or too many connecting: retry later
FATAL_CLOSES = frozenset({CLOSE_TOKEN_REFUSED, CLOSE_ID_REFUSED, CLOSE_PROTOCOL, CLOSE_BANNED})
EXIT_REFUSED = 78  # the agent's exit status after a fatal refusal (sysexits' EX_CONFIG)

# Error codes a host may give with a job's error; the coordinator has words for each.
CONTEXT_EXCEEDED = "context_length_exceeded"
CANNOT_EMBED = "model_cannot_embed"

# Why a host does not take jobs, as codes (the coordinator writes the words people see).
PAUSE_CODES = ("active_hours", "vram_low", "vram_foreign", "gpu_hot", "gpu_error", "draining", "backend_down")

JobKind = Literal["chat", "embed"]








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
class MigInstance:
    uuid: str | None = None
    memory_total: int | None = None
    memory_used: int | None = None


@dataclass(slots=True)
class GpuReading:
    """One GPU as NVML describes it; every field optional, numbers in range."""

    index: int = 0
    name: str = "unknown"
    uuid: str | None = None
    memory_total: int | None = None
    memory_used: int | None = None
    memory_free: int | None = None
    utilization_gpu: int | None = None  # percent, 0-100
    utilization_memory: int | None = None
    temperature: int | None = None  # degrees Celsius
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    mig_mode: bool | None = None
    mig_instances: list[MigInstance] = field(default_factory=list)
    other_processes_memory: int | None = None
    error: str | None = None


@dataclass(slots=True)
class HostReading:
    cpu: str = ""
    cores: int = 0
    os: str = ""
    load_1m: float = 0.0
    ram_total: int = 0
    ram_available: int = 0


@dataclass(slots=True)
class Hardware:
    gpus: list[GpuReading] = field(default_factory=list)
    host: HostReading | None = None
    nvml: str = "ok"


@dataclass(slots=True)
class Hello:
    name: str
    backend: str
    models: list[ModelInfo]
    capacity: int
    protocol: int = PROTOCOL_VERSION
    host_id: str | None = None
    token: str | None = None
    secret: str | None = None  # proves host_id in open enrolment (issued by welcome)
    backend_version: str | None = None
    hardware: Hardware = field(default_factory=Hardware)
    jobs: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    type: Literal["hello"] = "hello"


@dataclass(slots=True)
class Heartbeat:
    active: int
    status: str = "active"
    reason: str | None = None  # free text for the host's own log and the admin, never a page
    loaded: list[str] = field(default_factory=list)
    hardware: Hardware | None = None
    pause: list[str] = field(default_factory=list)  # codes from PAUSE_CODES
    capacity: int | None = None  # set when it changed (config reload)
    features: list[str] | None = None  # what the backend was found to support (probed after hello)
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
    secret: str | None = None  # a new host secret, to keep and send in every later hello
    max_frame_bytes: int | None = None  # the largest frame either side may send
    type: Literal["welcome"] = "welcome"


@dataclass(slots=True)
class Job:
    id: str
    kind: JobKind
    model: str
    request: dict[str, Any]
    budget: float  # seconds the host may spend on it, from when it arrives
    type: Literal["job"] = "job"


@dataclass(slots=True)
class Cancel:
    id: str
    type: Literal["cancel"] = "cancel"


HostMessage = Hello | Heartbeat | Models | Chunk | Done | JobError
CoordinatorMessage = Welcome | Job | Cancel
Message = HostMessage | CoordinatorMessage


def _plain(value: Any) -> Any:
    """Dataclass records (and lists of them) as plain JSON values; anything else as is
    (so long lists of numbers, such as embeddings, are not walked)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list) and value and is_dataclass(value[0]):
        return [_plain(v) for v in value]
    return value


def encode(message: Message) -> str:
    """A message as one JSON text frame (dataclasses.asdict is too slow for the hot path)."""
    return orjson.dumps({f.name: _plain(getattr(message, f.name)) for f in fields(message)}).decode()


def encode_chunk(job_id: str, content: str, tokens: int = 1) -> str:
    """Fast path for the most frequent frame (same wire form as ``encode(Chunk)``)."""
    return orjson.dumps({"id": job_id, "content": content, "tokens": tokens, "type": "chunk"}).decode()


def encode_job(job_id: str, kind: JobKind, model: str, request: dict[str, Any], budget: float) -> str:
    """Fast path for the job frame (same wire form as ``encode(Job)``)."""
    return orjson.dumps(
        {"id": job_id, "kind": kind, "model": model, "request": request, "budget": budget, "type": "job"}
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


def _finite32(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= FLOAT32_MAX


def _embeddings(obj: dict[str, Any]) -> list[list[float]] | None:
    """Vectors of finite float32 values (what base64 encoding packs), bounded in count and size."""
    raw = obj.get("embeddings")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_EMBEDDINGS or not all(
        isinstance(vec, list) and 0 < len(vec) <= MAX_EMBED_DIM and all(_finite32(x) for x in vec) for vec in raw
    ):
        raise ProtocolError(
            f"field 'embeddings' must be at most {MAX_EMBEDDINGS} lists of 1 to {MAX_EMBED_DIM} finite float32 numbers"
        )
    return raw


# --- hardware readings: clamped and cut, never rejected for a value --------------


def _clamp_int(raw: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(min(max(value, lo), hi))


def _clamp_float(raw: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(min(max(value, lo), hi))


def _cut(raw: dict[str, Any], key: str, max_len: int = 120) -> str | None:
    value = raw.get(key)
    return value[:max_len] if isinstance(value, str) and value else None


def _records(raw: dict[str, Any], key: str, limit: int) -> list[dict[str, Any]]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"field {key!r} must be a list of at most {limit} records")
    return [item for item in value if isinstance(item, dict)]


BYTES_MAX = 2**50  # a PiB: more than any GPU or host has


def _gpu(raw: dict[str, Any]) -> GpuReading:
    mig = raw.get("mig_mode")
    return GpuReading(
        index=_clamp_int(raw, "index", 0, 1023) or 0,
        name=_cut(raw, "name") or "unknown",
        uuid=_cut(raw, "uuid", 80),
        memory_total=_clamp_int(raw, "memory_total", 0, BYTES_MAX),
        memory_used=_clamp_int(raw, "memory_used", 0, BYTES_MAX),
        memory_free=_clamp_int(raw, "memory_free", 0, BYTES_MAX),
        utilization_gpu=_clamp_int(raw, "utilization_gpu", 0, 100),
        utilization_memory=_clamp_int(raw, "utilization_memory", 0, 100),
        temperature=_clamp_int(raw, "temperature", -50, 200),
        power_draw_w=_clamp_float(raw, "power_draw_w", 0, 100_000),
        power_limit_w=_clamp_float(raw, "power_limit_w", 0, 100_000),
        driver_version=_cut(raw, "driver_version", 40),
        cuda_driver_version=_cut(raw, "cuda_driver_version", 40),
        mig_mode=mig if isinstance(mig, bool) else None,
        mig_instances=[
            MigInstance(_cut(m, "uuid", 80), _clamp_int(m, "memory_total", 0, BYTES_MAX),
                        _clamp_int(m, "memory_used", 0, BYTES_MAX))
            for m in _records(raw, "mig_instances", MAX_MIG)
        ],
        other_processes_memory=_clamp_int(raw, "other_processes_memory", 0, BYTES_MAX),
        error=_cut(raw, "error", 200),
    )


def _host_reading(raw: Any) -> HostReading | None:
    if not isinstance(raw, dict):
        return None
    return HostReading(
        cpu=_cut(raw, "cpu") or "",
        cores=_clamp_int(raw, "cores", 0, 65_536) or 0,
        os=_cut(raw, "os") or "",
        load_1m=_clamp_float(raw, "load_1m", 0, 1e6) or 0.0,
        ram_total=_clamp_int(raw, "ram_total", 0, BYTES_MAX) or 0,
        ram_available=_clamp_int(raw, "ram_available", 0, BYTES_MAX) or 0,
    )


def read_hardware(raw: Any) -> Hardware:
    """Typed readings out of a hardware object: the agent's own probe, or a host's frame."""
    if raw is None:
        return Hardware()
    if not isinstance(raw, dict):
        raise ProtocolError("field 'hardware' must be an object")
    return Hardware(
        gpus=[_gpu(g) for g in _records(raw, "gpus", MAX_GPUS)],
        host=_host_reading(raw.get("host")),
        nvml=_cut(raw, "nvml", 200) or "ok",
    )


def _pause(obj: dict[str, Any]) -> list[str]:
    codes = _str_list(obj, "pause", limit=len(PAUSE_CODES))
    return [c for c in codes if c in PAUSE_CODES]  # a code this version does not know is dropped


# --- host messages, one decoder each -------------------------------------------------


def _text(obj: dict[str, Any], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string")
    return value


def _chunk(obj: dict[str, Any]) -> Chunk:
    return Chunk(
        id=_str(obj, "id", max_len=MAX_ID_LEN),
        content=_text(obj, "content"),
        tokens=_int(obj, "tokens", lo=0, hi=1_000_000, optional=True) or 1,
    )


def _done(obj: dict[str, Any]) -> Done:
    reason = obj.get("finish_reason", "stop")
    if reason not in ("stop", "length"):
        raise ProtocolError("field 'finish_reason' must be 'stop' or 'length'")
    return Done(
        id=_str(obj, "id", max_len=MAX_ID_LEN),
        finish_reason=reason,
        usage=_usage(obj),
        embeddings=_embeddings(obj),
        content=_text(obj, "content", ""),
    )


def _error(obj: dict[str, Any]) -> JobError:
    return JobError(
        id=_str(obj, "id", max_len=MAX_ID_LEN),
        status=_int(obj, "status", lo=400, hi=599),
        message=_text(obj, "message")[:2000],
        code=_str(obj, "code", optional=True),
        retry_after=_num(obj, "retry_after", lo=0, hi=86400, optional=True),
    )


def _heartbeat(obj: dict[str, Any]) -> Heartbeat:
    status = obj.get("status", "active")
    if status not in HOST_STATUSES:
        raise ProtocolError(f"field 'status' must be one of {HOST_STATUSES}")
    return Heartbeat(
        active=_int(obj, "active", lo=0, hi=100_000),
        status=status,
        reason=_str(obj, "reason", optional=True),
        loaded=_str_list(obj, "loaded"),
        hardware=read_hardware(obj["hardware"]) if obj.get("hardware") is not None else None,
        pause=_pause(obj),
        capacity=_int(obj, "capacity", lo=1, hi=1024, optional=True),
        features=_str_list(obj, "features", limit=MAX_FEATURES) if obj.get("features") is not None else None,
    )


def _hello(obj: dict[str, Any]) -> Hello:
    protocol = _int(obj, "protocol", lo=1, hi=1000)
    if not OLDEST_PROTOCOL <= protocol <= PROTOCOL_VERSION:
        newer = "the coordinator" if protocol > PROTOCOL_VERSION else "andy-host on this host"
        raise VersionError(
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
        secret=_str(obj, "secret", max_len=MAX_SECRET_LEN, optional=True),
        hardware=read_hardware(obj.get("hardware")),
        jobs=_str_list(obj, "jobs", limit=1024),
        features=_str_list(obj, "features", limit=MAX_FEATURES),
    )


def _models_message(obj: dict[str, Any]) -> Models:
    return Models(models=_models(obj))


HOST_DECODERS: dict[str, Any] = {
    "chunk": _chunk, "done": _done, "error": _error, "heartbeat": _heartbeat, "models": _models_message,
    "hello": _hello,
}


def _decode_host(obj: dict[str, Any], kind: str) -> HostMessage:
    decoder = HOST_DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown host message type {kind!r}")
    message: HostMessage = decoder(obj)
    return message


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
            budget=_num(obj, "budget", lo=0, hi=86400),
        )
    if kind == "cancel":
        return Cancel(id=_str(obj, "id", max_len=MAX_ID_LEN))
    if kind == "welcome":
        return Welcome(
            protocol=_int(obj, "protocol", lo=1, hi=1000),
            host_id=_str(obj, "host_id", max_len=MAX_ID_LEN),
            heartbeat_interval=_num(obj, "heartbeat_interval", lo=0.01, hi=3600),
            secret=_str(obj, "secret", max_len=MAX_SECRET_LEN, optional=True),
            max_frame_bytes=_int(obj, "max_frame_bytes", lo=1024, hi=2**31, optional=True),
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


def decode_host_object(obj: dict[str, Any]) -> HostMessage:
    """Validate a host's frame already parsed as a JSON object."""
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no 'type'")
    return _decode_host(obj, kind)


def decode_coordinator(text: str | bytes) -> CoordinatorMessage:
    """Decode and validate a frame sent by the coordinator."""
    obj, kind = _load(text)
    return _decode_coordinator(obj, kind)
