"""Schemas of the coordinator's OpenAPI document (openapi.py): the OpenAI API's
requests and answers, and the Ollama API's."""

from __future__ import annotations

from typing import Any

# The most tokens one request may hold on the host serving the most (absent: no host says).
MAX_MODEL_LEN = {"type": "integer", "minimum": 1}

FINISH_REASONS = ["stop", "length", "tool_calls"]
TOOL = {
    "type": "object", "required": ["type", "function"],
    "properties": {"type": {"type": "string", "enum": ["function"]}, "function": {
        "type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}, "description": {"type": "string"},
            "parameters": {"type": "object"}}}},
}
TOOL_CALL: dict[str, Any] = {
    "type": "object",
    "properties": {"index": {"type": "integer"}, "id": {"type": "string"}, "type": {"type": "string"},
                   "function": {"type": "object", "properties": {
                       "name": {"type": "string"}, "arguments": {"type": "string"}}}},
}
RESPONSE_FORMAT = {
    "type": "object", "required": ["type"],
    "properties": {"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                   "json_schema": {"type": "object", "properties": {
                       "name": {"type": "string"}, "schema": {"type": "object"}, "strict": {"type": "boolean"}}}},
}
TOKEN_FIELDS: dict[str, Any] = {"token": {"type": "string"}, "logprob": {"type": "number"},
                                "bytes": {"type": "array", "items": {"type": "integer"}}}
TOKEN = {"type": "object", "required": ["token", "logprob"], "properties": TOKEN_FIELDS}
CHAT_LOGPROBS: dict[str, Any] = {"type": "object", "properties": {"content": {"type": "array", "items": {
    **TOKEN, "properties": {**TOKEN_FIELDS, "top_logprobs": {"type": "array", "items": TOKEN}}}}}}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}
USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool", "developer"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object", "properties": {
                    "type": {"type": "string"}, "text": {"type": "string"}}}},
            ],
            "nullable": True,
        },
    },
}
CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "example": "smollm2-135m"},
        "messages": {"type": "array", "items": MESSAGE, "minItems": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}]},
        "seed": {"type": "integer"},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "n": {"type": "integer", "minimum": 1, "description": "at most coordinator.max_choices; 1 when streaming"},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "tools": {"type": "array", "items": TOOL},
        "tool_choice": {"oneOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {
            "type": "object", "required": ["type", "function"], "properties": {
                "type": {"type": "string", "enum": ["function"]},
                "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}]},
        "parallel_tool_calls": {"type": "boolean"},
        "response_format": RESPONSE_FORMAT,
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    },
}
CHAT_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "message", "finish_reason"],
            "properties": {
                "index": {"type": "integer"},
                "message": {"type": "object", "properties": {
                    "role": {"type": "string"}, "content": {"type": "string", "nullable": True},
                    "tool_calls": {"type": "array", "items": TOOL_CALL}}},
                "finish_reason": {"type": "string", "enum": FINISH_REASONS},
                "logprobs": {**CHAT_LOGPROBS, "nullable": True},
            }}},
        "usage": USAGE,
    },
}
CHUNK = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion.chunk"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "delta", "finish_reason"],
            "properties": {
                "index": {"type": "integer"},
                "delta": {"type": "object", "properties": {
                    "role": {"type": "string"}, "content": {"type": "string"},
                    "tool_calls": {"type": "array", "items": {**TOOL_CALL, "required": ["index"]}}}},
                "finish_reason": {"type": "string", "enum": FINISH_REASONS, "nullable": True},
                "logprobs": {**CHAT_LOGPROBS, "nullable": True},
            }}},
        "usage": {**USAGE, "nullable": True},
    },
}
# One SSE event. Its data is the JSON of a CHUNK, of an ERROR (the last event of a
# stream that failed after content: then no [DONE]), or the literal [DONE].
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "JSON of a chunk or an error, or [DONE]"}},
    "x-data-schemas": {"chunk": CHUNK, "error": ERROR},
}
EMBED_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
    },
}
EMBED_RESPONSE = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
            "properties": {
                "object": {"type": "string"},
                "index": {"type": "integer"},
                "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]},
            }}},
        "model": {"type": "string"},
        "usage": USAGE,
    },
}
MODELS = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": {"type": "object", "required": ["id", "object", "created", "owned_by"],
            "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
                           "owned_by": {"type": "string"}, "max_model_len": MAX_MODEL_LEN}}},
    },
}
COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": {"type": "string", "example": "smollm2-135m"},
        "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                                   "maxItems": 1}]},
        "max_tokens": {"type": "integer", "minimum": 1, "description": "16 when not given, as OpenAI"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 16}]},
        "seed": {"type": "integer"},
        "n": {"type": "integer", "minimum": 1},
        "echo": {"type": "boolean"},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    },
}
COMPLETION_LOGPROBS = {"type": "object", "nullable": True, "properties": {
    "tokens": {"type": "array", "items": {"type": "string"}},
    "token_logprobs": {"type": "array", "items": {"type": "number"}},
    "top_logprobs": {"type": "array", "items": {"type": "object"}},
    "text_offset": {"type": "array", "items": {"type": "integer"}}}}
COMPLETION_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["text_completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "text", "finish_reason"],
            "properties": {"index": {"type": "integer"}, "text": {"type": "string"},
                           "finish_reason": {"type": "string", "enum": FINISH_REASONS, "nullable": True},
                           "logprobs": COMPLETION_LOGPROBS}}},
        "usage": {**USAGE, "nullable": True},
    },
}
MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
    "id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
    "owned_by": {"type": "string"}, "max_model_len": MAX_MODEL_LEN}}

# --- the Responses API (responses_api.py) ---------------------------------------------------

_TEXT_PART = {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"type": "string", "enum": ["input_text", "output_text"]}, "text": {"type": "string"}}}
RESPONSES_ITEM = {
    "type": "object",
    "description": "a message ({role, content}, type message), a function_call or a function_call_output",
    "properties": {
        "type": {"type": "string", "enum": ["message", "function_call", "function_call_output"]},
        "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
        "call_id": {"type": "string"}, "name": {"type": "string"}, "arguments": {"type": "string"},
        "output": {"type": "string"},
    },
}
_TOOL_NAME: dict[str, Any] = {"type": {"type": "string", "enum": ["function"]},
                              "name": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}}
RESPONSES_TOOL = {"type": "object", "required": ["type", "name"], "properties": {
    **_TOOL_NAME, "description": {"type": "string"}, "parameters": {"type": "object"}, "strict": {"type": "boolean"}}}
RESPONSES_FORMAT = {"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
    "name": {"type": "string"}, "schema": {"type": "object"}, "strict": {"type": "boolean", "nullable": True},
    "description": {"type": "string", "nullable": True}}}
RESPONSES_TOOL_CHOICE = {"oneOf": [{"type": "string", "enum": ["none", "auto", "required"]}, {
    "type": "object", "required": ["type", "name"], "properties": {
        "type": {"type": "string", "enum": ["function"]}, "name": {"type": "string"}}}]}
RESPONSES_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "description": "Refused with a 400 naming them: previous_response_id, conversation, prompt, background, "
                   "include, reasoning (other than effort none), built-in tools, input images, files and audio, "
                   "truncation auto, top_logprobs. Unknown fields are ignored.",
    "properties": {
        "model": {"type": "string", "example": "smollm2-135m"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": RESPONSES_ITEM, "minItems": 1}]},
        "instructions": {"type": "string", "nullable": True},
        "max_output_tokens": {"type": "integer", "minimum": 1, "nullable": True},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
        "stream": {"type": "boolean", "nullable": True},
        "store": {"type": "boolean", "nullable": True, "description": "accepted; nothing is stored"},
        "metadata": {"type": "object", "nullable": True, "additionalProperties": {"type": "string"}},
        "user": {"type": "string"},
        "tools": {"type": "array", "items": RESPONSES_TOOL},
        "tool_choice": RESPONSES_TOOL_CHOICE,
        "parallel_tool_calls": {"type": "boolean", "nullable": True},
        "text": {"type": "object", "properties": {"format": RESPONSES_FORMAT}},
    },
}
_NULLABLE_NUMBER = {"type": "number", "nullable": True}
RESPONSES_OUTPUT_ITEM = {
    "type": "object",
    "required": ["type", "id", "status"],
    "properties": {
        "type": {"type": "string", "enum": ["message", "function_call"]},
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["in_progress", "completed", "incomplete"]},
        "role": {"type": "string", "enum": ["assistant"]},
        "content": {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {
            "type": {"type": "string", "enum": ["output_text"]}, "text": {"type": "string"},
            "annotations": {"type": "array", "items": {"type": "object"}},
            "logprobs": {"type": "array", "items": {"type": "object"}}}}},
        "call_id": {"type": "string"}, "name": {"type": "string"}, "arguments": {"type": "string"},
    },
}
RESPONSES_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output", "error", "incomplete_details",
                 "parallel_tool_calls", "tool_choice", "tools"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["response"]},
        "created_at": {"type": "integer"},
        "completed_at": {"type": "integer", "nullable": True},
        "status": {"type": "string", "enum": ["in_progress", "completed", "incomplete", "failed"]},
        "model": {"type": "string"},
        "output": {"type": "array", "items": RESPONSES_OUTPUT_ITEM},
        "error": {"type": "object", "nullable": True, "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}}},
        "incomplete_details": {"type": "object", "nullable": True, "properties": {
            "reason": {"type": "string", "enum": ["max_output_tokens", "content_filter"]}}},
        "instructions": {"type": "string", "nullable": True},
        "max_output_tokens": {"type": "integer", "nullable": True},
        "max_tool_calls": {"type": "integer", "nullable": True},
        "metadata": {"type": "object"},
        "parallel_tool_calls": {"type": "boolean"},
        "previous_response_id": {"type": "string", "nullable": True},
        "store": {"type": "boolean", "description": "always false: nothing is stored"},
        "temperature": _NULLABLE_NUMBER,
        "top_p": _NULLABLE_NUMBER,
        "text": {"type": "object", "properties": {"format": RESPONSES_FORMAT}},
        "tool_choice": RESPONSES_TOOL_CHOICE,
        "tools": {"type": "array", "items": {"type": "object", "required": ["type", "name"], "properties": {
            **_TOOL_NAME, "description": {"type": "string", "nullable": True},
            "parameters": {"type": "object", "nullable": True}, "strict": {"type": "boolean", "nullable": True}}}},
        "usage": {"type": "object", "nullable": True, "required": ["input_tokens", "output_tokens", "total_tokens"],
                  "properties": {"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
                                 "total_tokens": {"type": "integer"},
                                 "input_tokens_details": {"type": "object"},
                                 "output_tokens_details": {"type": "object"}}},
        "user": {"type": "string", "nullable": True},
    },
}
# One event of a streamed response: "event: <type>" and a data line with the JSON of
# the event (its type and sequence_number; the response itself in response.created,
# response.in_progress, response.completed, response.incomplete and response.failed).
RESPONSES_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added", "response.output_text.delta", "response.output_text.done",
            "response.content_part.done", "response.output_item.done", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.completed", "response.incomplete",
            "response.failed", "error"]},
        "data": {"type": "string", "description": "JSON: {type, sequence_number, ...}"},
    },
    "x-data-schemas": {"response": RESPONSES_RESPONSE, "error": ERROR},
}

# --- the Ollama API ---------------------------------------------------------------------

OLLAMA_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
OLLAMA_OPTIONS = {"type": "object", "properties": {
    "temperature": {"type": "number", "minimum": 0, "maximum": 2}, "top_p": {"type": "number", "minimum": 0,
                                                                             "maximum": 1},
    "num_predict": {"type": "integer", "minimum": -2}, "seed": {"type": "integer"},
    "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 16}},
    "description": "others (num_ctx, top_k...) are ignored: hosts use their own"}
OLLAMA_FORMAT = {"oneOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}]}
OLLAMA_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]}, "content": {"type": "string"},
    "tool_calls": {"type": "array", "items": {"type": "object"}}, "tool_name": {"type": "string"}}}
OLLAMA_CHAT = {"type": "object", "required": ["model", "messages"], "properties": {
    "model": {"type": "string", "example": "smollm2-135m"},
    "messages": {"type": "array", "items": OLLAMA_MESSAGE, "minItems": 1},
    "tools": {"type": "array", "items": TOOL}, "format": OLLAMA_FORMAT, "options": OLLAMA_OPTIONS,
    "stream": {"type": "boolean"}, "keep_alive": {"oneOf": [{"type": "string"}, {"type": "number"}]},
    "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20}}}
OLLAMA_GENERATE = {"type": "object", "required": ["model"], "properties": {
    "model": {"type": "string", "example": "smollm2-135m"}, "prompt": {"type": "string"},
    "system": {"type": "string"}, "raw": {"type": "boolean"}, "format": OLLAMA_FORMAT, "options": OLLAMA_OPTIONS,
    "stream": {"type": "boolean"}, "logprobs": {"type": "boolean"}}}
_DONE = {"done": {"type": "boolean"}, "done_reason": {"type": "string"}, "total_duration": {"type": "integer"},
         "load_duration": {"type": "integer"}, "prompt_eval_count": {"type": "integer"},
         "prompt_eval_duration": {"type": "integer"}, "eval_count": {"type": "integer"},
         "eval_duration": {"type": "integer"}, "model": {"type": "string"}, "created_at": {"type": "string"}}
OLLAMA_CHAT_ANSWER = {"type": "object", "required": ["model", "done"], "properties": {
    **_DONE, "message": OLLAMA_MESSAGE, "logprobs": {"type": "array", "items": {"type": "object"}}}}
OLLAMA_GENERATE_ANSWER = {"type": "object", "required": ["model", "done"], "properties": {
    **_DONE, "response": {"type": "string"}}}
OLLAMA_EMBED = {"type": "object", "required": ["model"], "properties": {
    "model": {"type": "string", "example": "smollm2-135m"},
    "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
    "prompt": {"type": "string"}}}
OLLAMA_EMBED_ANSWER = {"type": "object", "properties": {
    "model": {"type": "string"}, "embeddings": {"type": "array", "items": {"type": "array", "items": {
        "type": "number"}}}, "embedding": {"type": "array", "items": {"type": "number"}}}}
OLLAMA_MODEL = {"type": "object", "required": ["name", "model"], "properties": {
    "name": {"type": "string"}, "model": {"type": "string"}, "size": {"type": "integer"},
    "digest": {"type": "string"}, "details": {"type": "object"}, "modified_at": {"type": "string"}}}
OLLAMA_MODELS = {"type": "object", "required": ["models"], "properties": {
    "models": {"type": "array", "items": OLLAMA_MODEL}}}
OLLAMA_SHOW = {"type": "object", "required": ["model"], "properties": {"model": {"type": "string"},
                                                                        "name": {"type": "string"}}}
