"""OpenAI request bodies validated into the typed requests sent to hosts.

Unknown fields are ignored (clients send many: ``user``, ``metadata``, ``store``...),
but a known parameter that would change the answer and that the pool cannot honour
gets a 400 naming it, never a silent drop; known fields of the wrong type or out of
range get a 400 that names the field too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from andy_host.errors import ProtocolError, bad_request
from andy_host.protocol import ChatRequest, CompletionRequest, Message, Tool, ToolCall
from andy_host.protocol.fields import depth
from andy_host.protocol.requests import (
    MAX_MESSAGES,
    MAX_SCHEMA_DEPTH,
    MAX_STOP,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
)

ROLES = {"system", "user", "assistant", "tool", "developer"}
MAX_EMBED_INPUTS = 2048
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# Parameters that change the answer and that no host of the pool can honour.
UNSUPPORTED = {
    "audio": "audio output is not supported by this pool",
    "functions": "`functions` is deprecated and not supported; use `tools`",
    "function_call": "`function_call` is deprecated and not supported; use `tool_choice`",
    "prediction": "predicted outputs are not supported by this pool",
    "web_search_options": "web search is not supported by this pool",
    "reasoning_effort": "`reasoning_effort` is not supported by this pool's backends",
    "suffix": "`suffix` (insertion) is not supported by this pool",
}


@dataclass(slots=True)
class Asked:
    """What a chat or completion body asks, besides the request itself."""

    stream: bool
    include_usage: bool
    n: int


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"`{key}` must be a number", param=key)
    if not lo <= value <= hi:
        raise bad_request(f"`{key}` must be between {lo} and {hi}, got {value}", param=key)
    return float(value)


def _integer(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"`{key}` must be an integer", param=key)
    if not lo <= value <= hi:
        raise bad_request(f"`{key}` must be between {lo} and {hi}, got {value}", param=key)
    return value


def _boolean(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"`{key}` must be true or false", param=key)
    return value


def _string(raw: dict[str, Any], key: str, param: str, max_len: int = 128) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise bad_request(f"`{param}` must be a non-empty string of at most {max_len} characters", param=param)
    return value


def _content(raw: Any, index: int, max_chars: int) -> str:
    text = _content_text(raw, index)
    if len(text) > max_chars:
        raise bad_request(
            f"`messages[{index}].content` is longer than {max_chars} characters", param=f"messages[{index}].content"
        )
    return text


def _content_text(raw: Any, index: int) -> str:
    param = f"messages[{index}].content"
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise bad_request(f"`{param}` must be a string or an array of content parts", param=param)
    parts = []
    for j, part in enumerate(raw):
        if isinstance(part, str):
            parts.append(part)
            continue
        if not isinstance(part, dict):
            raise bad_request(f"`{param}[{j}]` must be an object", param=param)
        kind = part.get("type")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"`{param}[{j}]` has type {kind!r}; this pool accepts text content parts only",
                              param=param)
        parts.append(part["text"])
    return "".join(parts)


def parse_model(body: dict[str, Any]) -> str:
    """The model asked for; "" when the pool is to choose (``auto``, or none given)."""
    model = body.get("model")
    if model is None:
        return ""
    if not isinstance(model, str):
        raise bad_request("`model` must be a string: a model's name, or \"auto\" to let the pool choose",
                          param="model")
    model = model.strip()
    return "" if model.lower() == "auto" else model


# --- messages and tools ------------------------------------------------------------------


def _tool_calls(raw: Any, index: int) -> list[ToolCall]:
    param = f"messages[{index}].tool_calls"
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOL_CALLS:
        raise bad_request(f"`{param}` must be an array of at most {MAX_TOOL_CALLS} calls", param=param)
    calls = []
    for j, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise bad_request(f"`{param}[{j}]` must be an object with a `function`", param=param)
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise bad_request(f"`{param}[{j}].function.arguments` must be a JSON string", param=param)
        calls.append(ToolCall(id=_string(call, "id", f"{param}[{j}].id"),
                              name=_string(function, "name", f"{param}[{j}].function.name"), arguments=arguments))
    return calls


def _message(raw: Any, index: int, max_chars: int) -> Message:
    if not isinstance(raw, dict):
        raise bad_request(f"`messages[{index}]` must be an object", param=f"messages[{index}]")
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad_request(f"`messages[{index}].role` must be one of {sorted(ROLES)}", param=f"messages[{index}].role")
    message = Message(role="system" if role == "developer" else role,
                      content=_content(raw.get("content"), index, max_chars))
    if role == "assistant":
        message.tool_calls = _tool_calls(raw.get("tool_calls"), index)
    if role == "tool":
        message.tool_call_id = _string(raw, "tool_call_id", f"messages[{index}].tool_call_id")
        message.name = raw.get("name") if isinstance(raw.get("name"), str) and raw["name"] else None
    return message


def _messages(body: dict[str, Any], max_chars: int) -> list[Message]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` is required and must be a non-empty array", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"`messages` has more than {MAX_MESSAGES} entries", param="messages")
    return [_message(m, i, max_chars) for i, m in enumerate(messages)]


def _schema(value: dict[str, Any], param: str) -> dict[str, Any]:
    """A JSON schema no deeper than hosts accept (protocol MAX_SCHEMA_DEPTH)."""
    try:
        depth(value, MAX_SCHEMA_DEPTH)
    except ProtocolError:
        raise bad_request(f"`{param}` nests deeper than {MAX_SCHEMA_DEPTH} levels", param=param) from None
    return value


def _tool(raw: Any, index: int) -> Tool:
    param = f"tools[{index}]"
    if not isinstance(raw, dict) or raw.get("type", "function") != "function":
        raise bad_request(f"`{param}.type` must be 'function' (the only tool type this pool supports)", param=param)
    function = raw.get("function")
    if not isinstance(function, dict):
        raise bad_request(f"`{param}.function` must be an object", param=param)
    name = _string(function, "name", f"{param}.function.name")
    if not TOOL_NAME.match(name):
        raise bad_request(f"`{param}.function.name` may hold letters, digits, _ . : and - only", param=param)
    parameters = function.get("parameters") or {}
    description = function.get("description") or ""
    if not isinstance(parameters, dict) or not isinstance(description, str):
        raise bad_request(f"`{param}.function.parameters` must be a JSON schema object", param=param)
    return Tool(name=name, description=description, parameters=_schema(parameters, param))


def _tools(body: dict[str, Any], request: ChatRequest) -> None:
    raw = body.get("tools")
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
            raise bad_request(f"`tools` must be an array of at most {MAX_TOOLS} tools", param="tools")
        request.tools = [_tool(t, i) for i, t in enumerate(raw)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or name not in {t.name for t in request.tools}:
            raise bad_request("`tool_choice` names a function that is not in `tools`", param="tool_choice")
        request.tool_choice, request.tool_name = "function", name
    elif choice is not None:
        if choice not in ("none", "auto", "required"):
            raise bad_request("`tool_choice` must be 'none', 'auto', 'required' or a named function",
                              param="tool_choice")
        if choice == "required" and not request.tools:
            raise bad_request("`tool_choice` is 'required' but no `tools` are given", param="tool_choice")
        request.tool_choice = choice
    request.parallel_tool_calls = _boolean(body, "parallel_tool_calls")


# --- sampling, shared by chat and completions -----------------------------------------------


def _response_format(body: dict[str, Any], request: ChatRequest | CompletionRequest) -> None:
    raw = body.get("response_format")
    if raw is None:
        return
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        request.response_format = "json_object"
        return
    if kind != "json_schema":
        raise bad_request("`response_format.type` must be 'text', 'json_object' or 'json_schema'",
                          param="response_format")
    spec = raw.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise bad_request("`response_format.json_schema.schema` must be a JSON schema object",
                          param="response_format")
    request.response_format, request.json_schema = "json_schema", _schema(schema, "response_format")


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise bad_request(f"`stop` must be a string or an array of at most {MAX_STOP} strings", param="stop")
    return [s for s in stop if s]


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key, why in UNSUPPORTED.items():
        if body.get(key) not in (None, False, "", [], {}):
            raise bad_request(why, param=key, code="unsupported_parameter")
    if body.get("logit_bias"):
        raise bad_request("`logit_bias` is not supported by this pool", param="logit_bias",
                          code="unsupported_parameter")
    modalities = body.get("modalities")
    if modalities not in (None, ["text"]):
        raise bad_request("only text output is supported (`modalities: [\"text\"]`)", param="modalities",
                          code="unsupported_parameter")


def _sampling(body: dict[str, Any], request: ChatRequest | CompletionRequest) -> None:
    _refuse_unsupported(body)
    request.temperature = _number(body, "temperature", 0.0, 2.0)
    request.top_p = _number(body, "top_p", 0.0, 1.0)
    request.frequency_penalty = _number(body, "frequency_penalty", -2.0, 2.0)
    request.presence_penalty = _number(body, "presence_penalty", -2.0, 2.0)
    max_tokens = _integer(body, "max_tokens", 1, 1_000_000)
    request.max_tokens = max_tokens if max_tokens is not None else _integer(body, "max_completion_tokens", 1, 1_000_000)
    request.seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    request.stop = _stop(body)
    _response_format(body, request)


def _chat_logprobs(body: dict[str, Any], request: ChatRequest) -> None:
    request.logprobs = bool(_boolean(body, "logprobs"))
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not request.logprobs:
        raise bad_request("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
    request.top_logprobs = top


def _asked(body: dict[str, Any], max_choices: int) -> Asked:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("`stream_options` must be an object", param="stream_options")
    n = _integer(body, "n", 1, max_choices) or 1
    if n > 1 and stream:
        raise bad_request("`n` above 1 is supported without streaming only", param="n",
                          code="unsupported_parameter")
    return Asked(stream, bool(options.get("include_usage", False)), n)


def parse_chat(body: dict[str, Any], max_content_chars: int, max_choices: int) -> tuple[ChatRequest, Asked]:
    """The typed chat request that hosts receive (no client identity in it), and how
    the client wants the answer."""
    request = ChatRequest(messages=_messages(body, max_content_chars))
    _sampling(body, request)
    _chat_logprobs(body, request)
    _tools(body, request)
    asked = _asked(body, max_choices)
    request.stream = asked.stream
    return request, asked


def parse_completion(body: dict[str, Any], max_content_chars: int, max_choices: int) -> tuple[CompletionRequest, Asked]:
    """A legacy text completion: one prompt continued as is."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("`prompt` must be a string (one prompt per request)", param="prompt")
    if len(prompt) > max_content_chars:
        raise bad_request(f"`prompt` is longer than {max_content_chars} characters", param="prompt")
    if (_integer(body, "best_of", 1, 1) or 1) != 1:
        raise bad_request("`best_of` is not supported", param="best_of", code="unsupported_parameter")
    request = CompletionRequest(prompt=prompt)
    _sampling(body, request)
    if request.max_tokens is None:
        request.max_tokens = 16  # OpenAI's default for completions
    top = _integer(body, "logprobs", 0, 5)  # the legacy API: how many alternatives per token
    if top is not None:
        request.logprobs, request.top_logprobs = True, top
    asked = _asked(body, max_choices)
    request.stream = asked.stream
    return request, asked


def parse_embed(body: dict[str, Any]) -> tuple[list[str], str]:
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    else:
        raise bad_request("`input` must be a string or a non-empty array of strings", param="input")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise bad_request(f"`input` has more than {MAX_EMBED_INPUTS} entries", param="input")
    if any(not s for s in inputs):
        raise bad_request("`input` must not contain empty strings", param="input")
    encoding = body.get("encoding_format", "float") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request("`encoding_format` must be 'float' or 'base64'", param="encoding_format")
    return inputs, encoding
