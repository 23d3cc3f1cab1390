"""What a job asks of a host's backend: typed, validated on both sides.

The coordinator builds these from a client's body (coordinator/bodies.py and the
Ollama API), sends them in the job frame as plain JSON, and the agent reads them back
with :func:`read_request`, which bounds and types every field as the coordinator's
decoders do for what hosts send.

- :class:`ChatRequest`: messages (tool calls and results included), sampling, tools,
  structured output (a JSON object, or a JSON schema), log probabilities;
- :class:`CompletionRequest`: a raw prompt continued as is (no chat template);
- :class:`EmbedRequest`: texts to embed.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Literal

from andy_host.errors import ProtocolError
from andy_host.protocol.fields import (
    bool_field,
    depth,
    int_field,
    list_field,
    num_field,
    obj_field,
    str_field,
    text_field,
)

MAX_MESSAGES = 2048
MAX_TOOLS = 128
MAX_TOOL_CALLS = 64
MAX_STOP = 16
MAX_SCHEMA_DEPTH = 32
MAX_TOP_LOGPROBS = 20
MAX_EMBED_INPUTS = 2048
ROLES = ("system", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")
FORMATS = ("json_object", "json_schema")

JobKind = Literal["chat", "complete", "embed"]


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI carries it


@dataclass(slots=True)
class Message:
    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the tool's name


@dataclass(slots=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # a JSON schema


@dataclass(slots=True)
class Sampling:
    """What every generation may set."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stream: bool = True
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: str | None = None  # json_object | json_schema
    json_schema: dict[str, Any] | None = None


@dataclass(slots=True)
class ChatRequest(Sampling):
    messages: list[Message] = field(default_factory=list)
    continuation: bool = False  # the last message is an assistant's partial answer to continue
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str | None = None  # auto | none | required | function (then tool_name)
    tool_name: str | None = None
    parallel_tool_calls: bool | None = None


@dataclass(slots=True)
class CompletionRequest(Sampling):
    prompt: str = ""


@dataclass(slots=True)
class EmbedRequest:
    input: list[str] = field(default_factory=list)


JobRequest = ChatRequest | CompletionRequest | EmbedRequest


def request_dict(request: JobRequest) -> dict[str, Any]:
    """The request as the job frame carries it: only what differs from the defaults."""
    result: dict[str, Any] = _plain(request)
    return result


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if f.default is not MISSING and item == f.default:
                continue
            if f.default_factory is not MISSING and not item:  # an empty list or object
                continue
            out[f.name] = _plain(item)
        return out
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- reading (validating) a request --------------------------------------------------


def _tool_call(raw: Any) -> ToolCall:
    if not isinstance(raw, dict):
        raise ProtocolError("each tool call must be an object")
    return ToolCall(id=str_field(raw, "id", max_len=128), name=str_field(raw, "name", max_len=128),
                    arguments=text_field(raw, "arguments", "{}"))


def _message(raw: Any) -> Message:
    if not isinstance(raw, dict):
        raise ProtocolError("each message must be an object")
    role = raw.get("role")
    if role not in ROLES:
        raise ProtocolError(f"message role must be one of {ROLES}")
    return Message(
        role=role, content=text_field(raw, "content", ""),
        tool_calls=[_tool_call(c) for c in list_field(raw, "tool_calls", MAX_TOOL_CALLS)],
        tool_call_id=str_field(raw, "tool_call_id", max_len=128, optional=True),
        name=str_field(raw, "name", max_len=128, optional=True),
    )


def _tool(raw: Any) -> Tool:
    if not isinstance(raw, dict):
        raise ProtocolError("each tool must be an object")
    parameters = obj_field(raw, "parameters", optional=True) or {}
    depth(parameters, MAX_SCHEMA_DEPTH)
    return Tool(name=str_field(raw, "name", max_len=128), description=text_field(raw, "description", ""),
                parameters=parameters)


def _sampling(raw: dict[str, Any]) -> dict[str, Any]:
    stop = list_field(raw, "stop", MAX_STOP)
    if not all(isinstance(s, str) for s in stop):
        raise ProtocolError("field 'stop' must be a list of strings")
    response_format = raw.get("response_format")
    if response_format is not None and response_format not in FORMATS:
        raise ProtocolError(f"field 'response_format' must be one of {FORMATS}")
    schema = obj_field(raw, "json_schema", optional=True)
    if schema is not None:
        depth(schema, MAX_SCHEMA_DEPTH)
    return {
        "temperature": num_field(raw, "temperature", lo=0, hi=2, optional=True),
        "top_p": num_field(raw, "top_p", lo=0, hi=1, optional=True),
        "max_tokens": int_field(raw, "max_tokens", lo=1, hi=10**7, optional=True),
        "stop": stop,
        "seed": int_field(raw, "seed", lo=-(2**63), hi=2**64, optional=True),
        "frequency_penalty": num_field(raw, "frequency_penalty", lo=-2, hi=2, optional=True),
        "presence_penalty": num_field(raw, "presence_penalty", lo=-2, hi=2, optional=True),
        "stream": bool_field(raw, "stream", True),
        "logprobs": bool_field(raw, "logprobs"),
        "top_logprobs": int_field(raw, "top_logprobs", lo=0, hi=MAX_TOP_LOGPROBS, optional=True),
        "response_format": response_format,
        "json_schema": schema,
    }


def _chat(raw: dict[str, Any]) -> ChatRequest:
    messages = list_field(raw, "messages", MAX_MESSAGES)
    if not messages:
        raise ProtocolError("a chat request needs messages")
    choice = raw.get("tool_choice")
    if choice is not None and choice not in (*TOOL_CHOICES, "function"):
        raise ProtocolError("field 'tool_choice' must be auto, none, required or function")
    parallel = raw.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ProtocolError("field 'parallel_tool_calls' must be true or false")
    return ChatRequest(
        **_sampling(raw), messages=[_message(m) for m in messages],
        continuation=bool_field(raw, "continuation"),
        tools=[_tool(t) for t in list_field(raw, "tools", MAX_TOOLS)],
        tool_choice=choice, tool_name=str_field(raw, "tool_name", max_len=128, optional=True),
        parallel_tool_calls=parallel,
    )


def _completion(raw: dict[str, Any]) -> CompletionRequest:
    return CompletionRequest(**_sampling(raw), prompt=text_field(raw, "prompt", ""))


def _embed(raw: dict[str, Any]) -> EmbedRequest:
    inputs = list_field(raw, "input", MAX_EMBED_INPUTS)
    if not inputs or not all(isinstance(x, str) and x for x in inputs):
        raise ProtocolError("an embedding request needs a list of non-empty texts")
    return EmbedRequest(input=inputs)


def read_request(kind: str, raw: dict[str, Any]) -> JobRequest:
    """The job's request, typed and bounded (raises ProtocolError)."""
    if kind == "chat":
        return _chat(raw)
    if kind == "complete":
        return _completion(raw)
    if kind == "embed":
        return _embed(raw)
    raise ProtocolError(f"unknown job kind {kind!r}")
