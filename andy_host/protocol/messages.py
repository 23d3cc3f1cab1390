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

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal

import orjson

from andy_host.errors import ProtocolError, VersionError
from andy_host.protocol.fields import (
    finite32,
    int_field,
    list_field,
    num_field,
    obj_field,
    str_field,
    str_list,
    text_field,
)
from andy_host.protocol.hardware import Hardware, read_hardware
from andy_host.protocol.requests import (
    MAX_TOOL_CALLS,
    MAX_TOP_LOGPROBS,
    JobKind,
    JobRequest,
    ToolCall,
    request_dict,
)

# 2: ``done`` may carry the answer's last content.
# 3: hosts send a heartbeat every BUSY_HEARTBEAT seconds while they hold jobs (a silent
#    one is frozen); welcome issues a host secret and says the frame limit; hello
#    proves its id with that secret; heartbeats carry pause reasons as codes.
#    Later, within 3 (optional fields an older peer ignores, so no new version that
#    would make either side refuse the other): a model's ``served_context`` (tokens per
#    request its backend serves, as the backend says), and a job error's
#    ``prompt_tokens`` and ``context_tokens`` (the backend's counts when it rejected a
#    prompt for its context).
PROTOCOL_VERSION = 3
# The oldest version of a host the coordinator accepts: 3, because older hosts could
# opt out of the busy heartbeats that tell a frozen host, and had no host secret.
OLDEST_PROTOCOL = 3
HOSTS_WS_PATH = "/api/andy/hosts/ws"  # where hosts connect, on the coordinator
MAX_ID_LEN = 64
MAX_SECRET_LEN = 128
MAX_MODELS = 500
MAX_FEATURES = 32
MAX_EMBED_DIM = 65_536
MAX_EMBEDDINGS = 2048
MAX_LOGPROBS = 4096  # token entries in one frame
MAX_TOKEN_LEN = 64  # characters of one token
MAX_CONTEXT = 2**31 - 1  # the largest count of tokens (a context, a prompt) a frame may carry
JOB_KINDS = ("chat", "complete", "embed")
HOST_STATUSES = ("active", "paused", "draining", "backend_down")
# What a host's backend can do (hello and heartbeat ``features``); tools are per model
# (``ModelInfo.tools``).
FEATURE_CONTINUE = "continue"  # can continue a final assistant message (failover mid-stream)
FEATURE_JSON_SCHEMA = "json_schema"  # structured output: a JSON object, or one matching a schema
FEATURE_LOGPROBS = "logprobs"  # log probabilities of the tokens
FEATURE_COMPLETION = "completion"  # raw text completion (no chat template)
FEATURE_TOOL_CHOICE = "tool_choice"  # honours tool_choice required / a named function
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

FINISH_REASONS = ("stop", "length", "tool_calls")


@dataclass(slots=True)
class ModelInfo:
    name: str
    size: int | None = None
    quantization: str | None = None
    family: str | None = None
    context_length: int | None = None  # the context the model was trained for (its GGUF's)
    loaded: bool = False
    embed: bool = False
    tools: bool = False  # its chat template takes tools
    # Tokens one request may hold (prompt and answer) on this host, as its backend serves
    # it now (llama.cpp: a slot's n_ctx; Ollama: the model's num_ctx); None: not known.
    served_context: int | None = None
    chat: bool = True  # it generates text (an embedding-only model does not)


@dataclass(slots=True)
class TokenLogprob:
    """One generated token's log probability, and the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


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
    """Content of a job; ``tokens`` backend chunks that arrived together, with their
    log probabilities when the job asked for them."""

    id: str
    content: str
    tokens: int = 1
    logprobs: list[TokenLogprob] | None = None
    type: Literal["chunk"] = "chunk"


@dataclass(slots=True)
class Done:
    """The end of a job. ``content`` is text that arrived together with the end (a
    short answer whole, or the last tokens): one frame instead of a chunk and a done.
    ``tool_calls`` are the calls the model made, whole."""

    id: str
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)
    embeddings: list[list[float]] | None = None
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    type: Literal["done"] = "done"


@dataclass(slots=True)
class JobError:
    id: str
    status: int
    message: str
    code: str | None = None
    retry_after: float | None = None
    prompt_tokens: int | None = None  # with context_length_exceeded: the prompt's tokens, as the backend counted
    context_tokens: int | None = None  # ... and the context it had for it
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
    request: dict[str, Any]  # a JobRequest as plain JSON (requests.read_request reads it)
    budget: float  # seconds the host may spend on it, from when it arrives
    trace: str | None = None  # the coordinator's request id, for both sides' logs
    type: Literal["job"] = "job"


@dataclass(slots=True)
class Cancel:
    id: str
    type: Literal["cancel"] = "cancel"


HostMessage = Hello | Heartbeat | Models | Chunk | Done | JobError
CoordinatorMessage = Welcome | Job | Cancel
Frame = HostMessage | CoordinatorMessage


def _plain(value: Any) -> Any:
    """Dataclass records (and lists of them) as plain JSON values; anything else as is
    (so long lists of numbers, such as embeddings, are not walked)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list) and value and is_dataclass(value[0]):
        return [_plain(v) for v in value]
    return value


def encode(message: Frame) -> str:
    """A message as one JSON text frame, unset (None) fields left out (dataclasses.asdict
    is too slow for the hot path)."""
    frame = {f.name: _plain(getattr(message, f.name)) for f in fields(message)}
    return orjson.dumps({k: v for k, v in frame.items() if v is not None}).decode()


def encode_chunk(job_id: str, content: str, tokens: int = 1, logprobs: list[TokenLogprob] | None = None) -> str:
    """Fast path for the most frequent frame (same wire form as ``encode(Chunk)``)."""
    frame: dict[str, Any] = {"id": job_id, "content": content, "tokens": tokens, "type": "chunk"}
    if logprobs is not None:
        frame["logprobs"] = _plain(logprobs)
    return orjson.dumps(frame).decode()


def encode_job(
    job_id: str, kind: JobKind, model: str, request: JobRequest | dict[str, Any], budget: float,
    trace: str | None = None,
) -> str:
    """Fast path for the job frame (same wire form as ``encode(Job)``): where a typed
    request becomes the frame's dict (``request_dict``)."""
    body = request if isinstance(request, dict) else request_dict(request)
    frame = {"id": job_id, "kind": kind, "model": model, "request": body, "budget": budget, "type": "job"}
    if trace is not None:
        frame["trace"] = trace
    return orjson.dumps(frame).decode()


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
                name=str_field(item, "name"),
                size=int_field(item, "size", lo=0, hi=2**62, optional=True),
                quantization=str_field(item, "quantization", optional=True),
                family=str_field(item, "family", optional=True),
                context_length=int_field(item, "context_length", lo=0, hi=2**31, optional=True),
                loaded=bool(item.get("loaded", False)),
                embed=bool(item.get("embed", False)),
                tools=bool(item.get("tools", False)),
                served_context=int_field(item, "served_context", lo=1, hi=MAX_CONTEXT, optional=True),
                chat=bool(item.get("chat", True)),
            )
        )
    return models


def _usage(obj: dict[str, Any]) -> dict[str, int]:
    raw = obj.get("usage") or {}
    if not isinstance(raw, dict):
        raise ProtocolError("field 'usage' must be an object")
    usage: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens"):
        if key in raw:
            usage[key] = int_field(raw, key, lo=0, hi=2**31)
    return usage


def _embeddings(obj: dict[str, Any]) -> list[list[float]] | None:
    """Vectors of finite float32 values (what base64 encoding packs), bounded in count and size."""
    raw = obj.get("embeddings")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_EMBEDDINGS or not all(
        isinstance(vec, list) and 0 < len(vec) <= MAX_EMBED_DIM and all(finite32(x) for x in vec) for vec in raw
    ):
        raise ProtocolError(
            f"field 'embeddings' must be at most {MAX_EMBEDDINGS} lists of 1 to {MAX_EMBED_DIM} finite float32 numbers"
        )
    return raw


def _pause(obj: dict[str, Any]) -> list[str]:
    codes = str_list(obj, "pause", len(PAUSE_CODES))
    return [c for c in codes if c in PAUSE_CODES]  # a code this version does not know is dropped


# --- host messages, one decoder each -------------------------------------------------


def _logprobs(obj: dict[str, Any]) -> list[TokenLogprob] | None:
    """Log probabilities of tokens: at most MAX_LOGPROBS entries, each a token, a finite
    log probability (<= 0) and at most MAX_TOP_LOGPROBS alternatives."""
    raw = obj.get("logprobs")
    if raw is None:
        return None
    entries = list_field(obj, "logprobs", MAX_LOGPROBS)
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ProtocolError("each logprob must be an object")
        top = list_field(entry, "top", MAX_TOP_LOGPROBS)
        if not all(isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and len(t[0]) <= MAX_TOKEN_LEN
                   and _logprob(t[1]) for t in top):
            raise ProtocolError("field 'top' must be a list of [token, logprob] pairs")
        value: Any = entry.get("logprob")
        if not _logprob(value):
            raise ProtocolError("field 'logprob' must be a finite number <= 0")
        out.append(TokenLogprob(token=text_field(entry, "token")[:MAX_TOKEN_LEN], logprob=float(value),
                                top=[(t[0], float(t[1])) for t in top]))
    return out


def _logprob(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e6 <= value <= 0


def _tool_calls(obj: dict[str, Any]) -> list[ToolCall]:
    calls = []
    for raw in list_field(obj, "tool_calls", MAX_TOOL_CALLS):
        if not isinstance(raw, dict):
            raise ProtocolError("each tool call must be an object")
        calls.append(ToolCall(id=str_field(raw, "id", max_len=128), name=str_field(raw, "name", max_len=128),
                              arguments=text_field(raw, "arguments", "{}")))
    return calls


def _chunk(obj: dict[str, Any]) -> Chunk:
    return Chunk(
        id=str_field(obj, "id", max_len=MAX_ID_LEN),
        content=text_field(obj, "content"),
        tokens=int_field(obj, "tokens", lo=0, hi=1_000_000, optional=True) or 1,
        logprobs=_logprobs(obj),
    )


def _done(obj: dict[str, Any]) -> Done:
    reason = obj.get("finish_reason", "stop")
    if reason not in FINISH_REASONS:
        raise ProtocolError(f"field 'finish_reason' must be one of {FINISH_REASONS}")
    return Done(
        id=str_field(obj, "id", max_len=MAX_ID_LEN),
        finish_reason=reason,
        usage=_usage(obj),
        embeddings=_embeddings(obj),
        content=text_field(obj, "content", ""),
        tool_calls=_tool_calls(obj),
        logprobs=_logprobs(obj),
    )


def _error(obj: dict[str, Any]) -> JobError:
    return JobError(
        id=str_field(obj, "id", max_len=MAX_ID_LEN),
        status=int_field(obj, "status", lo=400, hi=599),
        message=text_field(obj, "message")[:2000],
        code=str_field(obj, "code", optional=True),
        retry_after=num_field(obj, "retry_after", lo=0, hi=86400, optional=True),
        prompt_tokens=int_field(obj, "prompt_tokens", lo=0, hi=MAX_CONTEXT, optional=True),
        context_tokens=int_field(obj, "context_tokens", lo=1, hi=MAX_CONTEXT, optional=True),
    )


def _heartbeat(obj: dict[str, Any]) -> Heartbeat:
    status = obj.get("status", "active")
    if status not in HOST_STATUSES:
        raise ProtocolError(f"field 'status' must be one of {HOST_STATUSES}")
    return Heartbeat(
        active=int_field(obj, "active", lo=0, hi=100_000),
        status=status,
        reason=str_field(obj, "reason", optional=True),
        loaded=str_list(obj, "loaded", MAX_MODELS),
        hardware=read_hardware(obj["hardware"]) if obj.get("hardware") is not None else None,
        pause=_pause(obj),
        capacity=int_field(obj, "capacity", lo=1, hi=1024, optional=True),
        features=str_list(obj, "features", MAX_FEATURES) if obj.get("features") is not None else None,
    )


def _hello(obj: dict[str, Any]) -> Hello:
    protocol = int_field(obj, "protocol", lo=1, hi=1000)
    if not OLDEST_PROTOCOL <= protocol <= PROTOCOL_VERSION:
        newer = "the coordinator" if protocol > PROTOCOL_VERSION else "andy-host on this host"
        raise VersionError(
            f"protocol version {protocol} is not supported (coordinator speaks {OLDEST_PROTOCOL} to "
            f"{PROTOCOL_VERSION}); upgrade {newer}"
        )
    return Hello(
        protocol=protocol,
        name=str_field(obj, "name"),
        backend=str_field(obj, "backend"),
        backend_version=str_field(obj, "backend_version", optional=True),
        models=_models(obj),
        capacity=int_field(obj, "capacity", lo=1, hi=1024),
        host_id=str_field(obj, "host_id", max_len=MAX_ID_LEN, optional=True),
        token=str_field(obj, "token", max_len=512, optional=True),
        secret=str_field(obj, "secret", max_len=MAX_SECRET_LEN, optional=True),
        hardware=read_hardware(obj.get("hardware")),
        jobs=str_list(obj, "jobs", 1024),
        features=str_list(obj, "features", MAX_FEATURES),
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
        if job_kind not in JOB_KINDS:
            raise ProtocolError(f"field 'kind' must be one of {JOB_KINDS}")
        request = obj_field(obj, "request")  # read (typed, bounded) when the job runs: requests.read_request
        return Job(
            id=str_field(obj, "id", max_len=MAX_ID_LEN),
            kind=job_kind,
            model=str_field(obj, "model"),
            request=request,
            budget=num_field(obj, "budget", lo=0, hi=86400),
            trace=str_field(obj, "trace", max_len=MAX_ID_LEN, optional=True),
        )
    if kind == "cancel":
        return Cancel(id=str_field(obj, "id", max_len=MAX_ID_LEN))
    if kind == "welcome":
        return Welcome(
            protocol=int_field(obj, "protocol", lo=1, hi=1000),
            host_id=str_field(obj, "host_id", max_len=MAX_ID_LEN),
            heartbeat_interval=num_field(obj, "heartbeat_interval", lo=0.01, hi=3600),
            secret=str_field(obj, "secret", max_len=MAX_SECRET_LEN, optional=True),
            max_frame_bytes=int_field(obj, "max_frame_bytes", lo=1024, hi=2**31, optional=True),
        )
    raise ProtocolError(f"unknown coordinator message type {kind!r}")


def load_object(text: str | bytes) -> dict[str, Any]:
    """A frame's JSON object (ProtocolError for anything else)."""
    try:
        obj = orjson.loads(text)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame must be a JSON object")
    return obj


def _load(text: str | bytes) -> tuple[dict[str, Any], str]:
    obj = load_object(text)
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
