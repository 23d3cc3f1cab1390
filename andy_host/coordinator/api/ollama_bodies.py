"""Ollama API request bodies (``/api/chat``, ``/api/generate``, ``/api/embed``) read
into the same typed requests the OpenAI API makes, so both run alike on the pool.

Options honoured: temperature, top_p, num_predict, stop, seed, frequency_penalty and
presence_penalty. Others (num_ctx, top_k, repeat_penalty...) are ignored, as Ollama
itself ignores options a model does not use; a host's own settings apply. ``format``
("json" or a JSON schema), tools, tool calls and results, and log probabilities pass
through. Images, ``suffix``, ``template``, ``context`` and thinking get a 400.
"""

from __future__ import annotations

import json
from typing import Any

from andy_host.errors import bad_request
from andy_host.protocol import ChatRequest, CompletionRequest, Message, Sampling, Tool, ToolCall
from andy_host.protocol.requests import MAX_MESSAGES, MAX_STOP, MAX_TOOL_CALLS, MAX_TOOLS, MAX_TOP_LOGPROBS

ROLES = ("system", "user", "assistant", "tool")
REFUSED = {
    "images": "images are not supported by this pool",
    "suffix": "`suffix` (insertion) is not supported by this pool",
    "template": "`template` is not supported: hosts use their model's own template",
    "context": "`context` (the deprecated token memory) is not supported; send the conversation to /api/chat",
    "think": "thinking is not supported by this pool",
}


def _refuse(body: dict[str, Any]) -> None:
    for key, why in REFUSED.items():
        if body.get(key) not in (None, False, "", []):
            raise bad_request(why, param=key, code="unsupported_parameter")


def _number(options: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise bad_request(f"option `{key}` must be a number between {lo} and {hi}", param=f"options.{key}")
    return float(value)


def _int(options: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"option `{key}` must be an integer between {lo} and {hi}", param=f"options.{key}")
    return value


def _options(body: dict[str, Any], request: Sampling) -> None:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise bad_request("`options` must be an object", param="options")
    request.temperature = _number(options, "temperature", 0.0, 2.0)
    request.top_p = _number(options, "top_p", 0.0, 1.0)
    request.frequency_penalty = _number(options, "frequency_penalty", -2.0, 2.0)
    request.presence_penalty = _number(options, "presence_penalty", -2.0, 2.0)
    request.seed = _int(options, "seed", -(2**63), 2**63 - 1)
    predict = _int(options, "num_predict", -2, 1_000_000)
    request.max_tokens = predict if predict is not None and predict > 0 else None  # -1, -2: no limit
    stop = options.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise bad_request(f"option `stop` must be a list of at most {MAX_STOP} strings", param="options.stop")
    request.stop = [s for s in stop if s]


def _format(body: dict[str, Any], request: Sampling) -> None:
    fmt = body.get("format")
    if fmt in (None, ""):
        return
    if fmt == "json":
        request.response_format = "json_object"
    elif isinstance(fmt, dict):
        request.response_format, request.json_schema = "json_schema", fmt
    else:
        raise bad_request('`format` must be "json" or a JSON schema object', param="format")


def _logprobs(body: dict[str, Any], request: Sampling) -> None:
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise bad_request("`logprobs` must be true or false", param="logprobs")
    request.logprobs = bool(wanted)
    top = body.get("top_logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad_request(f"`top_logprobs` must be an integer from 0 to {MAX_TOP_LOGPROBS}", param="top_logprobs")
        request.top_logprobs = top if request.logprobs else None


def _sampling(body: dict[str, Any], request: Sampling) -> None:
    _refuse(body)
    _options(body, request)
    _format(body, request)
    _logprobs(body, request)
    stream = body.get("stream", True)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("`stream` must be true or false", param="stream")
    request.stream = stream is not False  # Ollama streams unless told not to


def _calls(raw: Any, index: int, ids: dict[str, str]) -> list[ToolCall]:
    if not isinstance(raw, list) or len(raw) > MAX_TOOL_CALLS:
        raise bad_request(f"`messages[{index}].tool_calls` must be a list of at most {MAX_TOOL_CALLS}",
                          param="messages")
    calls = []
    for j, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name or len(name) > 128:
            raise bad_request(f"`messages[{index}].tool_calls[{j}].function.name` is missing", param="messages")
        arguments = function.get("arguments") if isinstance(function, dict) else None
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else f"call_{index}_{j}"
        ids[name] = call_id[:128]
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        calls.append(ToolCall(id=call_id[:128], name=name, arguments=text))
    return calls


def _message(raw: Any, index: int, max_chars: int, ids: dict[str, str]) -> Message:
    if not isinstance(raw, dict) or raw.get("role") not in ROLES:
        raise bad_request(f"`messages[{index}]` must be an object with a role of {ROLES}", param="messages")
    _refuse({"images": raw.get("images")})
    content = raw.get("content") or ""
    if not isinstance(content, str) or len(content) > max_chars:
        raise bad_request(f"`messages[{index}].content` must be a string of at most {max_chars} characters",
                          param="messages")
    message = Message(role=raw["role"], content=content)
    if raw.get("tool_calls"):
        message.tool_calls = _calls(raw["tool_calls"], index, ids)
    if message.role == "tool":  # Ollama names the tool; OpenAI-style backends want the call's id
        name = raw.get("tool_name") or raw.get("name")
        message.name = name if isinstance(name, str) and name else None
        given = raw.get("tool_call_id")
        message.tool_call_id = given if isinstance(given, str) and given else ids.get(message.name or "", "call_0")
    return message


def _tools(raw: Any) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise bad_request(f"`tools` must be a list of at most {MAX_TOOLS} tools", param="tools")
    tools = []
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name or len(name) > 128:
            raise bad_request(f"`tools[{i}].function.name` is missing", param="tools")
        assert isinstance(function, dict)
        parameters = function.get("parameters") or {}
        description = function.get("description") or ""
        if not isinstance(parameters, dict) or not isinstance(description, str):
            raise bad_request(f"`tools[{i}].function.parameters` must be a JSON schema object", param="tools")
        tools.append(Tool(name=name, description=description, parameters=parameters))
    return tools


def parse_chat(body: dict[str, Any], max_chars: int) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise bad_request(f"`messages` must be a list of 1 to {MAX_MESSAGES} messages", param="messages")
    ids: dict[str, str] = {}
    request = ChatRequest(messages=[_message(m, i, max_chars, ids) for i, m in enumerate(messages)],
                          tools=_tools(body.get("tools")))
    _sampling(body, request)
    return request


def parse_generate(body: dict[str, Any], max_chars: int) -> ChatRequest | CompletionRequest:
    """``raw`` prompts are continued as is; others are one user message (after an
    optional ``system`` one), as Ollama's template would make them."""
    prompt, system = body.get("prompt") or "", body.get("system") or ""
    if not isinstance(prompt, str) or not isinstance(system, str) or len(prompt) + len(system) > max_chars:
        raise bad_request(f"`prompt` and `system` must be strings of at most {max_chars} characters", param="prompt")
    request: ChatRequest | CompletionRequest
    if body.get("raw") is True:
        request = CompletionRequest(prompt=prompt)
    else:
        system_message = [Message(role="system", content=system)] if system else []
        request = ChatRequest(messages=[*system_message, Message(role="user", content=prompt)])
    _sampling(body, request)
    return request


def parse_embed_input(body: dict[str, Any]) -> list[str]:
    raw = body.get("input", body.get("prompt"))
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
        raise bad_request("`input` must be a non-empty string or list of non-empty strings", param="input")
    if len(inputs) > 2048:
        raise bad_request("`input` has more than 2048 entries", param="input")
    return inputs
