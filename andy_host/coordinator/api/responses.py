"""The OpenAI Responses API: ``POST <prefix>/responses`` (``responses.create`` of the
OpenAI SDKs) under every prefix of the OpenAI API.

This module owns the translation both ways. A Responses body (``instructions``,
``input`` as a string or as message, ``function_call`` and ``function_call_output``
items, function ``tools``, ``text.format``...) becomes the chat body that
``bodies.parse_chat`` validates, so a response is a chat job like any other: the same
routing, failover, limits and key rules (``@limited("chat")``), and the same 400s,
worded in the Responses API's own parameter names. The answer goes back as a Response
object, or streamed as the API's typed server-sent events (``ResponsesWriter``):
``response.created`` ... ``response.completed``, or ``response.failed`` and ``error``
when the answer broke after content.

Nothing is stored. ``store: true`` is accepted, but a response cannot be fetched again,
so what needs a stored response (``previous_response_id``, ``conversation``, stored
``prompt`` templates, ``background``) is refused with a 400 naming it, as are built-in
tools and anything else the pool cannot honour. Unknown fields are ignored, as chat
completions ignore them.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from andy_host.coordinator.access.limits import limited
from andy_host.coordinator.api import openai_bodies as bodies
from andy_host.coordinator.api.answers import Whole, check_supported, resolve_model, streamed, whole
from andy_host.coordinator.api.openai import API_PREFIXES
from andy_host.coordinator.api.sse import SSE_HEADERS, usage_of
from andy_host.coordinator.pool.work import chat_work
from andy_host.coordinator.web.appconfig import CONFIG
from andy_host.coordinator.web.json import json_response, read_json
from andy_host.errors import APIError, bad_request
from andy_host.protocol import ChatRequest, Chunk, Done, ToolCall
from andy_host.protocol.requests import MAX_MESSAGES

ROLES = {"user", "assistant", "system", "developer"}
TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
MEDIA_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}
MAX_ID = 128  # call ids and function names, as chat's tool_calls take them
MAX_METADATA = 16  # key-value pairs, as OpenAI takes them
# Top-level parameters that need a stored response, conversation or prompt.
STORED = {
    "previous_response_id": "This pool stores no responses, so `previous_response_id` cannot be followed: send "
                            "the whole conversation in `input` (earlier answers as assistant messages and "
                            "function_call items, tool results as function_call_output items).",
    "conversation": "This pool stores no conversations: leave out `conversation` and send the whole conversation "
                    "in `input`.",
    "prompt": "This pool has no stored prompt templates: leave out `prompt` and put its text in `instructions` "
              "and `input`.",
    "background": "This pool answers while the request is open and stores no responses, so a `background` "
                  "response could never be fetched: leave out `background` (or set it to false).",
    "context_management": "This pool does not compact conversations: leave out `context_management`.",
}
BUILT_IN = ("This pool has no built-in tools (web search, file search, code interpreter, computer use, image "
            "generation, MCP, shell...): only `type: \"function\"` tools, which your code runs, are supported")


def _refuse(param: str, why: str) -> APIError:
    return bad_request(why, param=param, code="unsupported_parameter")


def _shown(value: Any) -> str:
    """A client's value, quoted in an error message (cut short)."""
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# --- errors in the Responses API's words ------------------------------------------------------


_WORDS = (
    (re.compile(r"response_format\.json_schema\.schema"), "text.format.schema"),
    (re.compile(r"response_format"), "text.format"),
    (re.compile(r"\bmax_(?:completion_)?tokens\b"), "max_output_tokens"),
    (re.compile(r"tools\[(\d+)\]\.function\."), r"tools[\1]."),
    (re.compile(r"`messages`"), "`input`"),
    (re.compile(r"\bthe messages\b"), "the input"),  # a context overflow's advice
)
_MESSAGE = re.compile(r"messages\[(\d+)\](\.content)?")


def _place(places: list[str], index: int) -> str:
    return places[index] if index < len(places) else "input"


def _param(param: str | None, places: list[str]) -> str | None:
    """The Responses parameter a chat error's ``param`` is about."""
    if param is None:
        return None
    found = _MESSAGE.match(param)
    if found:
        return "instructions" if _place(places, int(found.group(1))) == "instructions" else "input"
    if param == "messages":
        return "input"
    if param.startswith("tools["):
        return "tools"
    if param.startswith("response_format"):
        return "text.format"
    if param in ("max_tokens", "max_completion_tokens"):
        return "max_output_tokens"
    return param


def _words(message: str, places: list[str]) -> str:
    def where(found: re.Match[str]) -> str:
        place = _place(places, int(found.group(1)))
        return place + (found.group(2) or "") if place.startswith("input[") else place

    message = _MESSAGE.sub(where, message)
    for pattern, ours in _WORDS:
        message = pattern.sub(ours, message)
    return message


def in_responses_terms(error: APIError, places: list[str] | None = None) -> APIError:
    """``error`` (raised for the chat job) naming the Responses API's parameters."""
    places = places or []
    renamed = APIError(error.status, _words(error.message, places), type=error.type, code=error.code,
                       param=_param(error.param, places), headers=error.headers)
    return renamed


@contextmanager
def _responses_terms(places: list[str] | None = None) -> Iterator[None]:
    try:
        yield
    except APIError as error:
        raise in_responses_terms(error, places) from None


# --- the request ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Asked:
    """A Responses request: the chat request hosts receive, and the settings a
    Response object repeats."""

    chat: ChatRequest
    echo: dict[str, Any]


def _text(raw: Any, where: str, max_chars: int) -> str:
    """A message's content (a string or a list of text parts) as plain text."""
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, list):
        pieces = []
        for j, part in enumerate(raw):
            kind = part.get("type") if isinstance(part, dict) else None
            kind = kind if isinstance(kind, str) else None
            if kind in MEDIA_PARTS:
                raise _refuse("input", f"`{where}[{j}]` is an {kind} part: this pool's models take text only, "
                                       f"so {MEDIA_PARTS[kind]} cannot be sent; use input_text parts")
            key = TEXT_PARTS.get(kind) if kind is not None else None
            if key is None or not isinstance(part.get(key), str):
                raise bad_request(f"`{where}[{j}]` must be a text part: {{\"type\": \"input_text\" or "
                                  "\"output_text\", \"text\": \"...\"}", param="input")
            pieces.append(part[key])
        text = "".join(pieces)
    elif raw is None:
        text = ""
    else:
        raise bad_request(f"`{where}` must be a string or an array of text parts", param="input")
    if len(text) > max_chars:
        raise bad_request(f"`{where}` is longer than {max_chars} characters", param="input")
    return text


def _name(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise bad_request(f"`{where}.{key}` must be a non-empty string of at most {MAX_ID} characters", param="input")
    return value


class _Conversation:
    """The chat messages an ``input`` makes, and where each came from (for errors)."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.messages: list[dict[str, Any]] = []
        self.places: list[str] = []
        self.names: dict[str, str] = {}  # call_id -> the function's name, for the tool results

    def add(self, message: dict[str, Any], place: str) -> None:
        self.messages.append(message)
        self.places.append(place)

    def item(self, item: Any, index: int) -> None:
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise bad_request(f"`{where}` must be an object: a message or a function_call(_output) item",
                              param="input")
        kind = item.get("type", "message")
        if kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._call(item, where)
        elif kind == "function_call_output":
            call_id = _name(item, "call_id", where)
            content = _text(item.get("output"), f"{where}.output", self.max_chars)
            message = {"role": "tool", "tool_call_id": call_id, "content": content}
            if call_id in self.names:
                message["name"] = self.names[call_id]
            self.add(message, where)
        elif kind == "item_reference":
            raise _refuse("input", f"`{where}` refers to a stored item: this pool stores nothing, so send the "
                                   "item itself")
        else:
            raise bad_request(f"`{where}` has type {_shown(kind)}: this pool takes messages, function_call and "
                              "function_call_output items", param="input")

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            hint = " (a tool's result is a function_call_output item)" if role == "tool" else ""
            raise bad_request(f"`{where}.role` must be one of {sorted(ROLES)}{hint}", param="input")
        content = _text(item.get("content"), f"{where}.content", self.max_chars)
        self.add({"role": "system" if role == "developer" else role, "content": content}, where)

    def _call(self, item: dict[str, Any], where: str) -> None:
        call_id, name = _name(item, "call_id", where), _name(item, "name", where)
        arguments = item.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise bad_request(f"`{where}.arguments` must be a JSON string", param="input")
        self.names[call_id] = name
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":  # the same turn: its text, then its calls
            last.setdefault("tool_calls", []).append(call)
        else:
            self.add({"role": "assistant", "content": "", "tool_calls": [call]}, where)


def _conversation(body: dict[str, Any], max_chars: int) -> _Conversation:
    conversation = _Conversation(max_chars)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("`instructions` must be a string", param="instructions")
        if len(instructions) > max_chars:
            raise bad_request(f"`instructions` is longer than {max_chars} characters", param="instructions")
        if instructions:
            conversation.add({"role": "system", "content": instructions}, "instructions")
    raw = body.get("input")
    if isinstance(raw, str):
        conversation.add({"role": "user", "content": _text(raw, "input", max_chars)}, "input")
    elif isinstance(raw, list) and raw:
        for index, item in enumerate(raw):
            conversation.item(item, index)
    else:
        raise bad_request("`input` is required: a string, or a non-empty array of messages and items",
                          param="input")
    if len(conversation.messages) > MAX_MESSAGES:
        raise bad_request(f"`input` makes more than {MAX_MESSAGES} messages", param="input")
    return conversation


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """Chat's tools and the Response's echo of them."""
    raw = body.get("tools")
    if raw is None:
        return None, []
    if not isinstance(raw, list):
        raise bad_request("`tools` must be an array of function tools", param="tools")
    chat, echo = [], []
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise bad_request(f"`tools[{index}]` must be an object", param="tools")
        kind = tool.get("type")
        if kind != "function":
            raise _refuse("tools", f"`tools[{index}]` is a {_shown(kind)} tool. {BUILT_IN}.")
        if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
            raise bad_request(f"`tools[{index}].strict` must be true or false", param="tools")
        function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
        chat.append({"type": "function", "function": function})  # chat checks name, description, parameters
        description, parameters = tool.get("description"), tool.get("parameters")
        echo.append({"type": "function", "name": tool.get("name"),
                     "description": description if isinstance(description, str) else None,
                     "parameters": parameters if isinstance(parameters, dict) else None, "strict": tool.get("strict")})
    return chat, echo


def _tool_choice(body: dict[str, Any]) -> Any:
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return choice  # a string (or null): chat checks it
    if choice.get("type") != "function":
        raise _refuse("tool_choice", f"`tool_choice` of type {_shown(choice.get('type'))} is not supported: use "
                                     "'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}")
    if not isinstance(choice.get("name"), str):
        raise bad_request("`tool_choice.name` must be the name of a function in `tools`", param="tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def _text_format(body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Chat's ``response_format`` for ``text.format`` (``text.verbosity`` checked), and
    the format as the Response repeats it."""
    text = body.get("text")
    if text is None:
        return None, {"type": "text"}
    if not isinstance(text, dict):
        raise bad_request("`text` must be an object: {\"format\": {...}}", param="text")
    verbosity = text.get("verbosity")
    if verbosity not in (None, "medium"):
        raise _refuse("text.verbosity", f"`text.verbosity` {_shown(verbosity)} cannot be honoured: this pool's models "
                                        "have no verbosity setting (leave it out, or 'medium')")
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None, {"type": "text"}
    if kind == "json_object":
        return {"type": "json_object"}, {"type": "json_object"}
    if kind != "json_schema":
        raise bad_request("`text.format.type` must be 'text', 'json_object' or 'json_schema'", param="text.format")
    assert isinstance(fmt, dict)
    schema, name, strict = fmt.get("schema"), fmt.get("name", "response"), fmt.get("strict")
    if not isinstance(schema, dict):
        raise bad_request("`text.format.schema` must be a JSON schema object", param="text.format")
    if not isinstance(name, str) or not isinstance(fmt.get("description", ""), str) \
            or not isinstance(strict, bool | None):
        raise bad_request("`text.format` takes a string `name` and `description` and a boolean `strict`",
                          param="text.format")
    echo = {"type": "json_schema", "name": name, "schema": schema, "strict": strict,
            "description": fmt.get("description")}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}, echo


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key, why in STORED.items():
        if body.get(key) not in (None, False, "", [], {}):
            raise _refuse(key, why)
    include = body.get("include")
    if include is not None and not isinstance(include, list):
        raise bad_request("`include` must be an array", param="include")
    if include:
        raise _refuse("include", f"`include` asks for {_shown(include[0])}, which this pool does not produce (it "
                                 "returns the answer's text and function calls only): leave `include` out")
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise bad_request("`reasoning` must be an object", param="reasoning")
        if reasoning.get("effort") not in (None, "none") or reasoning.get("summary") is not None \
                or reasoning.get("generate_summary") is not None:
            raise _refuse("reasoning", f"`reasoning` {_shown(reasoning)} cannot be honoured: this pool's models have "
                                       "no reasoning setting (leave `reasoning` out, or set its effort to 'none')")
    truncation = body.get("truncation")
    if truncation == "auto":
        raise _refuse("truncation", "`truncation: \"auto\"` cannot be honoured: the pool does not drop input to fit "
                                    "the context (too long an input is a 400 context_length_exceeded); leave it out")
    if truncation not in (None, "disabled"):
        raise bad_request("`truncation` must be 'auto' or 'disabled'", param="truncation")
    if body.get("top_logprobs") not in (None, 0):
        raise _refuse("top_logprobs", "`top_logprobs` is not supported by this pool's Responses API (use chat "
                                      "completions with `logprobs`)")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > MAX_METADATA
                                 or not all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())):
        raise bad_request(f"`metadata` must be an object of at most {MAX_METADATA} strings", param="metadata")
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise bad_request("`store` must be true or false", param="store")


def parse_responses(body: dict[str, Any], max_content_chars: int, max_choices: int) -> Asked:
    """The chat request for a Responses body (400s in the Responses API's words)."""
    _refuse_unsupported(body)
    conversation = _conversation(body, max_content_chars)
    tools, echo_tools = _tools(body)
    chat: dict[str, Any] = {"messages": conversation.messages}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("max_output_tokens", "max_tokens"),
                         ("parallel_tool_calls", "parallel_tool_calls"), ("stream", "stream")):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    if tools is not None:
        chat["tools"] = tools
    choice = _tool_choice(body)
    if choice is not None:
        chat["tool_choice"] = choice
    response_format, echo_format = _text_format(body)
    if response_format is not None:
        chat["response_format"] = response_format
    with _responses_terms(conversation.places):
        request, _ = bodies.parse_chat(chat, max_content_chars, max_choices)
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls") if isinstance(body.get("max_tool_calls"), int) else None,
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": request.temperature,
        "text": {"format": echo_format, "verbosity": "medium"},
        "tool_choice": _echo_choice(request),
        "tools": echo_tools,
        "top_p": request.top_p,
        "user": body.get("user") if isinstance(body.get("user"), str) else None,
    }
    return Asked(request, echo)


def _echo_choice(request: ChatRequest) -> Any:
    if request.tool_choice == "function":
        return {"type": "function", "name": request.tool_name}
    return request.tool_choice or "auto"


# --- the answer ----------------------------------------------------------------------------------


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call: ToolCall, status: str = "completed", arguments: str | None = None) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
            "arguments": call.arguments if arguments is None else arguments, "status": status}


def _outcome(done: Done) -> tuple[str, dict[str, str] | None]:
    """The Response's status and incomplete_details for how the answer ended."""
    if done.finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if done.finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _usage(done: Done) -> dict[str, Any]:
    usage = usage_of(done)
    return {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0,
                                                                              "cache_write_tokens": 0},
            "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"]}


class Draft:
    """One Response: its id, model and the request's settings; :meth:`body` is the
    Response object at a given status."""

    def __init__(self, model: str, echo: dict[str, Any]) -> None:
        self.id, self.created_at, self.model, self.echo = _new_id("resp"), int(time.time()), model, echo

    def body(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
             incomplete: dict[str, str] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        finished = status in ("completed", "incomplete")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if finished else None, "background": False, "error": error,
            "incomplete_details": incomplete, "model": self.model, "output": output,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "service_tier": "default", "store": False, "truncation": "disabled", "top_logprobs": 0,
            "usage": usage, **self.echo,
        }

    def whole(self, answer: Whole) -> dict[str, Any]:
        status, incomplete = _outcome(answer.done)
        calls = answer.done.tool_calls
        output = []
        if answer.text or not calls:
            output.append(_message_item(_new_id("msg"), answer.text, "incomplete" if incomplete else "completed"))
        output += [_call_item(_new_id("fc"), call) for call in calls]
        return self.body(status, output, _usage(answer.done), incomplete)


class ResponsesWriter:
    """The Responses API's server-sent events (``event: <type>`` and a JSON ``data``
    with ``type`` and an increasing ``sequence_number``). The message item opens with
    the first text (an answer that is only function calls has none); function calls
    come whole with the end, each as its own output item."""

    headers = SSE_HEADERS

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # the items done
        self.message_id: str | None = None  # the open message item
        self.parts: list[str] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": len(self.output)}

    def start(self) -> bytes:
        snapshot = self.draft.body("in_progress", [])
        return self._event("response.created", response=snapshot) + self._event("response.in_progress",
                                                                                response=snapshot)

    def _open(self) -> bytes:
        self.message_id = _new_id("msg")
        item = _message_item(self.message_id, None, "in_progress")
        return (self._event("response.output_item.added", output_index=len(self.output), item=item)
                + self._event("response.content_part.added", **self._where(), content_index=0,
                              part=_text_part("")))

    def chunk(self, chunk: Chunk) -> bytes:
        if not chunk.content:
            return b""
        out = self._open() if self.message_id is None else b""
        self.parts.append(chunk.content)
        return out + self._event("response.output_text.delta", **self._where(), content_index=0,
                                 delta=chunk.content, logprobs=[])

    def _close(self, status: str) -> bytes:
        text = "".join(self.parts)
        item = _message_item(self.message_id or "", text, status)
        out = (self._event("response.output_text.done", **self._where(), content_index=0, text=text, logprobs=[])
               + self._event("response.content_part.done", **self._where(), content_index=0, part=_text_part(text))
               + self._event("response.output_item.done", output_index=len(self.output), item=item))
        self.output.append(item)
        self.message_id = None
        return out

    def _call(self, call: ToolCall) -> bytes:
        item_id, index = _new_id("fc"), len(self.output)
        where = {"item_id": item_id, "output_index": index}
        item = _call_item(item_id, call)
        out = (self._event("response.output_item.added", output_index=index,
                           item=_call_item(item_id, call, "in_progress", "")),
               self._event("response.function_call_arguments.delta", **where, delta=call.arguments),
               self._event("response.function_call_arguments.done", **where, name=call.name,
                           arguments=call.arguments),
               self._event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        return b"".join(out)

    def end(self, done: Done) -> bytes:
        status, incomplete = _outcome(done)
        out = self._open() if self.message_id is None and not done.tool_calls else b""
        if self.message_id is not None:
            out += self._close("incomplete" if incomplete else "completed")
        for call in done.tool_calls:
            out += self._call(call)
        response = self.draft.body(status, self.output, _usage(done), incomplete)
        return out + self._event(f"response.{status}", response=response)

    def error(self, error: APIError) -> bytes:
        """The answer broke after content: ``response.failed`` (with the text so far, its
        message ``incomplete``), then ``error``; never ``response.completed``."""
        error = in_responses_terms(error)
        output = list(self.output)
        if self.message_id is not None:
            output.append(_message_item(self.message_id, "".join(self.parts), "incomplete"))
        failed = self.draft.body("failed", output, error={"code": error.code or "server_error",
                                                          "message": error.message})
        # ``error`` also carries the error in the API's error shape, as chat's error
        # event does: the SDKs raise it (with its code) when they see it.
        return (self._event("response.failed", response=failed)
                + self._event("error", code=error.code, message=error.message, param=error.param,
                              error=error.body()["error"]))


@limited("chat")
async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    requested = bodies.parse_model(body)
    config = request.app[CONFIG]
    asked = parse_responses(body, config.max_content_chars, config.max_choices)
    with _responses_terms():
        work = chat_work(resolve_model(request, requested), asked.chat)
        check_supported(request, work)
        draft = Draft(work.model, asked.echo)
        if asked.chat.stream:
            return await streamed(request, work, ResponsesWriter(draft))
        answer = await whole(request, work)
    return json_response(draft.whole(answer))


def add_routes(app: web.Application) -> None:
    for prefix in API_PREFIXES:
        app.router.add_post(f"{prefix}/responses", create_response)
