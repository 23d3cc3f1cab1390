"""OpenAI request bodies validated into the normalised requests sent to hosts.

Unknown fields are ignored (clients send many); known fields of the wrong type or out
of range get a 400 that names the field.
"""

from __future__ import annotations

import math
from typing import Any

from andy_host.errors import bad_request

ROLES = {"system", "user", "assistant", "tool", "developer"}
MAX_MESSAGES = 2048
MAX_STOP = 16
MAX_EMBED_INPUTS = 2048


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
    if isinstance(raw, list):
        parts = []
        for j, part in enumerate(raw):
            if isinstance(part, str):
                parts.append(part)
                continue
            if not isinstance(part, dict):
                raise bad_request(f"`{param}[{j}]` must be an object", param=param)
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise bad_request(
                    f"`{param}[{j}]` has type {kind!r}; this pool accepts text content parts only",
                    param=param,
                )
        return "".join(parts)
    raise bad_request(f"`{param}` must be a string or an array of content parts", param=param)


def parse_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("`model` is required and must be a non-empty string", param="model")
    return model


def parse_chat(body: dict[str, Any], max_content_chars: int = 1_000_000) -> dict[str, Any]:
    """The normalised chat request that hosts receive (no client identity in it)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` is required and must be a non-empty array", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"`messages` has more than {MAX_MESSAGES} entries", param="messages")
    out_messages = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"`messages[{i}]` must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(
                f"`messages[{i}].role` must be one of {sorted(ROLES)}", param=f"messages[{i}].role"
            )
        content = _content(message.get("content"), i, max_content_chars)
        out_messages.append({"role": "system" if role == "developer" else role, "content": content})
    request: dict[str, Any] = {"messages": out_messages}
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = _number(body, key, lo, hi)
        if value is not None:
            request[key] = value
    max_tokens = _integer(body, "max_tokens", 1, 1_000_000)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", 1, 1_000_000)
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    if seed is not None:
        request["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
            raise bad_request(f"`stop` must be a string or an array of at most {MAX_STOP} strings", param="stop")
        stop = [s for s in stop if s]
        if stop:
            request["stop"] = stop
    return request


def parse_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("`stream_options` must be an object", param="stream_options")
    return stream, bool(options.get("include_usage", False))


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
