"""The OpenAPI 3.0 document of the coordinator's HTTP API, served at /openapi.json.

A test checks that every route of the application is described here and the other
way round, and a schemathesis run checks the answers against these schemas.
"""

from __future__ import annotations

from typing import Any

from andy_host import __version__

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
                    "role": {"type": "string"}, "content": {"type": "string"}}},
                "finish_reason": {"type": "string", "enum": ["stop", "length"]},
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
                "delta": {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}},
                "finish_reason": {"type": "string", "enum": ["stop", "length"], "nullable": True},
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
                           "owned_by": {"type": "string"}}}},
    },
}
OBJECT = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request", 401: "Missing or wrong API key", 404: "Unknown model or path",
            413: "Body too large", 429: "Rate limited (Retry-After)", 502: "Backend error",
            503: "No available hosts (Retry-After)", 504: "Timed out"}
    return {str(c): _json(ERROR, text[c]) for c in codes}


POOL = (400, 401, 404, 413, 429, 502, 503, 504)


def _op(summary: str, ok: dict[str, Any], errors: tuple[int, ...], body: dict[str, Any] | None = None,
        keyed: bool = False, admin: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if keyed:
        op["security"] = [{"apiKey": []}]
    if admin:
        op["security"] = [{"adminToken": []}]
    return op


def openapi_spec() -> dict[str, Any]:
    chat = _op(
        "Chat completion (OpenAI-compatible); with stream=true, Server-Sent Events ending in data: [DONE]",
        {"description": "The completion", "content": {
            "application/json": {"schema": CHAT_RESPONSE}, "text/event-stream": {"schema": SSE_EVENT}}},
        POOL, CHAT_REQUEST,
    )
    embed = _op("Embeddings (OpenAI-compatible)", _json(EMBED_RESPONSE, "The vectors"), POOL, EMBED_REQUEST, keyed=True)
    models = _op("Models served now, each once", _json(MODELS, "The list"), (401, 429), keyed=True)
    admin_key = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "daily_limit": {"type": "integer", "minimum": 1},
        "per_minute": {"type": "integer", "minimum": 1}, "host_token": {"type": "string"},
        "trusted_only": {"type": "boolean"}}}
    paths: dict[str, Any] = {}
    for prefix in ("/api/andy/v1", "/v1"):
        paths[f"{prefix}/chat/completions"] = {"post": chat}
        paths[f"{prefix}/embeddings"] = {"post": embed}
        paths[f"{prefix}/models"] = {"get": models}
    paths["/api/andy/models"] = {"get": _op(
        "Models with their host counts (Andy API shape)",
        _json({"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
            "type": "object", "required": ["name", "hosts"],
            "properties": {"name": {"type": "string"}, "hosts": {"type": "integer"}}}}}}, "Models"), ())}
    paths["/api/andy/pool_status"] = {"get": _op("Pool status: totals, hosts, models", _json(OBJECT, "Status"),
                                                 (401, 429), keyed=True)}
    paths["/health"] = {"get": _op("Liveness", _json(OBJECT, "Counts"), ())}
    paths["/"] = {"get": {"summary": "The live dashboard (HTML)", "responses": {
        "200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}}}}
    paths["/api/andy/dashboard"] = {"get": _op("The dashboard's public feed: aggregates and host names only",
                                               _json(OBJECT, "Pool view"), ())}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics (coordinator.metrics_access)", "responses": {
        "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **_errors(401, 404)}}}
    paths["/openapi.json"] = {"get": _op("This document", _json(OBJECT, "OpenAPI"), ())}
    paths["/api/andy/admin/keys"] = {
        "get": _op("List API keys (never the keys)", _json(OBJECT, "Keys"), (401, 404), admin=True),
        "post": {**_op("Create an API key (shown once)", _json(OBJECT, "The key"), (400, 401, 404), admin_key,
                       admin=True), "responses": {"201": _json(OBJECT, "The key"), **_errors(400, 401, 404)}},
    }
    paths["/api/andy/admin/keys/{ident}"] = {"delete": {
        **_op("Revoke a key (prefix or id)", _json(OBJECT, "Revoked"), (401, 404), admin=True),
        "parameters": [{"name": "ident", "in": "path", "required": True, "schema": {"type": "string"}}]}}
    paths["/api/andy/admin/tokens"] = {
        "get": _op("List host tokens", _json(OBJECT, "Tokens"), (401, 404), admin=True),
        "post": {**_op("Create a host token (shown once)", _json(OBJECT, "The token"), (400, 401, 404),
                       {"type": "object", "required": ["name"], "properties": {
                           "name": {"type": "string"}, "trusted": {"type": "boolean"}}},
                       admin=True), "responses": {"201": _json(OBJECT, "The token"), **_errors(400, 401, 404)}},
    }
    paths["/api/andy/admin/tokens/{ident}"] = {"delete": {
        **_op("Revoke a host token (its hosts are disconnected)", _json(OBJECT, "Revoked"), (401, 404), admin=True),
        "parameters": [{"name": "ident", "in": "path", "required": True, "schema": {"type": "string"}}]}}
    paths["/api/andy/admin/hosts"] = {"get": _op("Hosts: the ledger, each host's standing, the connected ones",
                                                 _json(OBJECT, "Hosts"), (401, 404), admin=True)}
    host_id = [{"name": "host_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    for action, summary, body in (
        ("release", "End a host's quarantine", None),
        ("ban", "Ban a host's credential (its token, else its id)",
         {"type": "object", "properties": {"reason": {"type": "string"}}}),
        ("check", "Run answer checks of a connected host now",
         {"type": "object", "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 1000}}}),
    ):
        op = _op(summary, _json(OBJECT, "Done"), (400, 401, 404), admin=True)
        if body is not None:
            op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
        paths[f"/api/andy/admin/hosts/{{host_id}}/{action}"] = {"post": {**op, "parameters": host_id}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "andy-host coordinator", "version": __version__,
                 "description": "OpenAI-compatible API of a distributed compute pool."},
        "paths": paths,
        "components": {"securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key, andy_sk_…"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "coordinator.admin_token"},
        }},
    }
