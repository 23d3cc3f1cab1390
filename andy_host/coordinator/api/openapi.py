"""The OpenAPI 3.0 document of the coordinator's HTTP API, served at /openapi.json.

A test checks that every route of the application is described here and the other
way round, and a schemathesis run checks the answers against these schemas.
"""

from __future__ import annotations

from typing import Any

from andy_host import __version__
from andy_host.coordinator.api.openai import API_PREFIXES
from andy_host.coordinator.api.openapi_schemas import (
    CHAT_REQUEST,
    CHAT_RESPONSE,
    COMPLETION_REQUEST,
    COMPLETION_RESPONSE,
    EMBED_REQUEST,
    EMBED_RESPONSE,
    ERROR,
    MODEL,
    MODELS,
    OLLAMA_CHAT,
    OLLAMA_CHAT_ANSWER,
    OLLAMA_EMBED,
    OLLAMA_EMBED_ANSWER,
    OLLAMA_ERROR,
    OLLAMA_GENERATE,
    OLLAMA_GENERATE_ANSWER,
    OLLAMA_MODELS,
    OLLAMA_SHOW,
    RESPONSES_EVENT,
    RESPONSES_REQUEST,
    RESPONSES_RESPONSE,
    SSE_EVENT,
)

OBJECT = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int, schema: dict[str, Any] = ERROR) -> dict[str, Any]:
    text = {400: "Invalid request", 401: "Missing or wrong API key", 404: "Unknown model or path",
            408: "The body did not arrive in time", 413: "Body too large", 429: "Rate limited (Retry-After)",
            502: "Backend error", 503: "No available hosts (Retry-After)", 504: "Timed out"}
    return {str(c): _json(schema, text[c]) for c in codes}


POOL = (400, 401, 404, 408, 413, 429, 502, 503, 504)


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


def _openai_paths() -> dict[str, Any]:
    streamed = "with stream=true, Server-Sent Events ending in data: [DONE]"
    chat = _op(f"Chat completion (OpenAI-compatible: tools, response_format, logprobs, n); {streamed}",
               {"description": "The completion", "content": {
                   "application/json": {"schema": CHAT_RESPONSE}, "text/event-stream": {"schema": SSE_EVENT}}},
               POOL, CHAT_REQUEST)
    complete = _op(f"Text completion of a raw prompt (no chat template); {streamed}",
                   {"description": "The completion", "content": {
                       "application/json": {"schema": COMPLETION_RESPONSE},
                       "text/event-stream": {"schema": SSE_EVENT}}},
                   POOL, COMPLETION_REQUEST)
    embed = _op("Embeddings (OpenAI-compatible)", _json(EMBED_RESPONSE, "The vectors"), POOL, EMBED_REQUEST, keyed=True)
    models = _op("Models served now, each once", _json(MODELS, "The list"), (401, 429), keyed=True)
    model = {**_op("One model, by name or alias", _json(MODEL, "The model"), (401, 404, 429), keyed=True),
             "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]}
    responses = _op("OpenAI Responses API (a chat job; nothing is stored): instructions, input messages and "
                    "function_call(_output) items, function tools, text.format; with stream=true, typed "
                    "Server-Sent Events (event: response.created ... response.completed, or response.failed)",
                    {"description": "The Response", "content": {
                        "application/json": {"schema": RESPONSES_RESPONSE},
                        "text/event-stream": {"schema": RESPONSES_EVENT}}},
                    POOL, RESPONSES_REQUEST)
    paths: dict[str, Any] = {}
    for prefix in API_PREFIXES:
        paths[f"{prefix}/chat/completions"] = {"post": chat}
        paths[f"{prefix}/responses"] = {"post": responses}
        paths[f"{prefix}/completions"] = {"post": complete}
        paths[f"{prefix}/embeddings"] = {"post": embed}
        paths[f"{prefix}/models"] = {"get": models}
        paths[f"{prefix}/models/{{model}}"] = {"get": model}
    return paths


def _ollama(summary: str, ok: dict[str, Any], body: dict[str, Any] | None = None, keyed: bool = False,
            errors: tuple[int, ...] = POOL) -> dict[str, Any]:
    op = _op(summary, ok, (), body, keyed=keyed)
    op["responses"].update(_errors(*errors, schema=OLLAMA_ERROR))
    return op


def _ollama_paths() -> dict[str, Any]:
    def answer(schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": "The answer; streamed (the default) as NDJSON, the last line done: true",
                "content": {"application/json": {"schema": schema}, "application/x-ndjson": {"schema": schema}}}

    listing = _json(OLLAMA_MODELS, "Models")
    return {
        "/api/chat": {"post": _ollama("Ollama chat (free within the anonymous limit)", answer(OLLAMA_CHAT_ANSWER),
                                      OLLAMA_CHAT)},
        "/api/generate": {"post": _ollama("Ollama generate (raw: no template)", answer(OLLAMA_GENERATE_ANSWER),
                                          OLLAMA_GENERATE)},
        "/api/embed": {"post": _ollama("Ollama embed", _json(OLLAMA_EMBED_ANSWER, "Vectors"), OLLAMA_EMBED, True)},
        "/api/embeddings": {"post": _ollama("Ollama embeddings (the older endpoint)",
                                            _json(OLLAMA_EMBED_ANSWER, "A vector"), OLLAMA_EMBED, True)},
        "/api/tags": {"get": _ollama("Models served now", listing, keyed=True, errors=(401, 429))},
        "/api/ps": {"get": _ollama("Models loaded on some host", listing, keyed=True, errors=(401, 429))},
        "/api/show": {"post": _ollama("A model's details and capabilities", _json(OBJECT, "Details"), OLLAMA_SHOW,
                                      True, errors=(400, 401, 404, 408, 413, 429))},
        "/api/version": {"get": _ollama("The Ollama API version spoken", _json(OBJECT, "Version"), errors=())},
    }


def _site_paths() -> dict[str, Any]:
    return {
        "/api/andy/models": {"get": _op(
            "Models with their host counts (Andy API shape)",
            _json({"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {
                "type": "object", "required": ["name", "hosts"],
                "properties": {"name": {"type": "string"}, "hosts": {"type": "integer"},
                               "max_model_len": {"type": "integer", "nullable": True}}}}}}, "Models"), ())},
        "/api/andy/pool_status": {"get": _op("Pool status: totals, hosts, models", _json(OBJECT, "Status"),
                                             (401, 429), keyed=True)},
        "/health": {"get": _op("Liveness", _json(OBJECT, "Counts"), ())},
        "/": {"get": {"summary": "The live dashboard (HTML)", "responses": {
            "200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/api/andy/dashboard": {"get": _op("The dashboard's public feed: aggregates and host names only",
                                           _json(OBJECT, "Pool view"), ())},
        "/metrics": {"get": {"summary": "Prometheus metrics (coordinator.metrics_access)", "responses": {
            "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(401, 404)}}},
        "/openapi.json": {"get": _op("This document", _json(OBJECT, "OpenAPI"), ())},
        "/api/andy/hosts/{host_id}/credit": {"get": {
            **_op("A host's own escrow: jobs and tokens held until an answer check passes, credited, voided",
                  _json(HOST_CREDIT, "Its figures"), (401, 429, 503)),
            "parameters": [{"name": "host_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "security": [{"hostCredential": []}],
        }},
    }


_AMOUNT = {"type": "object", "required": ["jobs", "tokens"],
           "properties": {"jobs": {"type": "integer"}, "tokens": {"type": "integer"}}}
HOST_CREDIT = {"type": "object", "required": ["host_id", "connected", "quarantined", "held", "credited", "voided"],
               "properties": {"host_id": {"type": "string"}, "connected": {"type": "boolean"},
                              "quarantined": {"type": "boolean"}, "held": _AMOUNT, "credited": _AMOUNT,
                              "voided": _AMOUNT}}


def _admin_credentials() -> dict[str, Any]:
    admin_key = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "daily_limit": {"type": "integer", "minimum": 1},
        "per_minute": {"type": "integer", "minimum": 1}, "host_token": {"type": "string"},
        "trusted_only": {"type": "boolean"},
        "expires": {"oneOf": [{"type": "string"}, {"type": "number"}], "nullable": True,
                    "description": "a duration (30d, 12h), an ISO date, seconds since the epoch, or null: never"},
        "models": {"type": "array", "items": {"type": "string"}, "nullable": True,
                   "description": "model names or patterns the key may use; [] or null: every model"}}}
    key_changes = {**admin_key, "required": [], "additionalProperties": False}
    ident = [{"name": "ident", "in": "path", "required": True, "schema": {"type": "string"}}]
    token = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
                                                                     "trusted": {"type": "boolean"}}}
    return {
        "/api/andy/admin/keys": {
            "get": _op("List API keys (never the keys)", _json(OBJECT, "Keys"), (401, 404), admin=True),
            "post": {**_op("Create an API key (shown once)", _json(OBJECT, "The key"), (400, 401, 404), admin_key,
                           admin=True), "responses": {"201": _json(OBJECT, "The key"), **_errors(400, 401, 404)}},
        },
        "/api/andy/admin/keys/{ident}": {
            "delete": {**_op("Revoke a key (prefix or id)", _json(OBJECT, "Revoked"), (401, 404), admin=True),
                       "parameters": ident},
            "patch": {**_op("Change a key's name, limits, expiry, models or trusted_only (absent fields stay)",
                            _json(OBJECT, "The key as listed"), (400, 401, 404), key_changes, admin=True),
                      "parameters": ident}},
        "/api/andy/admin/tokens": {
            "get": _op("List host tokens", _json(OBJECT, "Tokens"), (401, 404), admin=True),
            "post": {**_op("Create a host token (shown once)", _json(OBJECT, "The token"), (400, 401, 404), token,
                           admin=True), "responses": {"201": _json(OBJECT, "The token"), **_errors(400, 401, 404)}},
        },
        "/api/andy/admin/tokens/{ident}": {"delete": {
            **_op("Revoke a host token (its hosts are disconnected)", _json(OBJECT, "Revoked"), (401, 404),
                  admin=True), "parameters": ident}},
    }


def _admin_hosts() -> dict[str, Any]:
    paths: dict[str, Any] = {"/api/andy/admin/hosts": {"get": _op(
        "Hosts: the ledger, each host's standing, the connected ones", _json(OBJECT, "Hosts"), (401, 404),
        admin=True)}}
    host_id = [{"name": "host_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    for action, summary, body in (
        ("release", "End a host's quarantine", None),
        ("ban", "Ban a host's credential (its token, else its id)",
         {"type": "object", "properties": {"reason": {"type": "string"}}}),
        ("kick", "Disconnect a host and refuse it for `seconds` (default kick_seconds)",
         {"type": "object", "properties": {"seconds": {"type": "number", "exclusiveMinimum": True, "minimum": 0}}}),
        ("check", "Run answer checks of a connected host now",
         {"type": "object", "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 1000}}}),
    ):
        op = _op(summary, _json(OBJECT, "Done"), (400, 401, 404), admin=True)
        if body is not None:
            op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
        paths[f"/api/andy/admin/hosts/{{host_id}}/{action}"] = {"post": {**op, "parameters": host_id}}
    paths["/api/andy/admin/status"] = {"get": _op(
        "Live totals: hosts by status, models and capacity, queue, request and token rates over the last minute",
        _json(OBJECT, "Status"), (401, 404), admin=True)}
    return paths


def openapi_spec() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "andy-host coordinator", "version": __version__,
                 "description": "OpenAI-compatible (and Ollama-compatible) API of a distributed compute pool."},
        "paths": {**_openai_paths(), **_ollama_paths(), **_site_paths(), **_admin_credentials(), **_admin_hosts()},
        "components": {"securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key, andy_sk_…"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "coordinator.admin_token"},
            "hostCredential": {"type": "http", "scheme": "bearer",
                               "description": "The host's token (andy_ht_…) or issued host secret (andy_hs_…)"},
        }},
    }
