"""The API's OpenAPI 3.1 document, made by flask-openapi3 from the routes' models and completed here
with what no model says: the streams' media types and the WebSocket's frames, binary bodies, the
error examples (each with ``x-request``, the request that produces it — the tests replay every one),
and the links between operations that a stateful client (or fuzzer) follows. Served at
``/api/v1/openapi.json``; ``/api/docs`` shows it with Swagger UI from files in the package."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

from flask import Blueprint, current_app, jsonify, redirect, render_template, url_for
from flask_openapi3 import Info

if TYPE_CHECKING:
    from flask_openapi3 import OpenAPI

VERSION = "1.0.0"

DESCRIPTION = """The HTTP API of the wabot platform: bots (WhatsApp numbers), their conversations and
messages, reply rules and AI settings, media, the outbox, and live events.

**Authentication.** Every request under `/api/v1` sends `Authorization: Bearer <key>`; the key decides
the tenant. A key may be limited to scopes, chosen when it is created: `read` (read everything),
`send` (write to customers: send, upload media, take conversations over, retry failed sends),
`manage` (bots, rules, AI settings, webhooks, users and keys). Each operation's security requirement
names the scope it needs; a request outside its key's scopes gets 403 `forbidden` naming the missing
one. Keys made without scopes have full access.

**Errors** are JSON: `{"error": {"status", "code", "message", "field"?}, "request_id"}`; `field` names
the request field at fault as a path (`rules[2].pattern`, `transport_options.proxy`, `ai.temperature`).
Another tenant's objects are 404, like ids that name nothing. The examples of each error response
carry `x-request`: the request that produces them.

**Limits.** Each key (and each dashboard session) may make bursts of requests, then a steady rate:
reads (GET, HEAD) and writes apart. Past the limit the answer is 429 `rate_limited` with `Retry-After`;
every answer carries `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers). A live
stream counts once, when it connects. See `docs/api.md`, "Request limits".

**Webhooks**: the platform POSTs the tenant's events to its endpoints (`/api/v1/webhooks`), signed as
Standard Webhooks; each delivery and attempt is in the endpoint's log. Payloads and signatures:
`docs/webhooks.md`.

**Live events** come as server-sent events from `GET /api/v1/events` (see there) or over a WebSocket,
`GET /api/v1/ws` (see there, and `docs/api.md` for every frame).

The guide — concepts, flows and examples — is `docs/api.md`."""

WEBSOCKET = """The tenant's live events (the same events, filters and resume as `GET /api/v1/events`) plus
commands, over one WebSocket. Frames are JSON text frames, one message each.

Authenticate with the `Authorization: Bearer <key>` header, or — browsers cannot set headers on a
WebSocket — `?token=<key>`; or, from the dashboard's own pages, its session cookie. Query:
`last_event_id` (resume after it), `bot` and `type` (filters, as for the SSE stream).

**Server frames**: `{"type": "ready", "last_event_id"}` first; then `{"type": "event", "event": {"id",
"type", "bot_id", "payload", "created_at"}}` for each event in id order; `{"type": "ping"}` when idle
(with a WebSocket ping); `{"type": "pong", "id"}`; `{"type": "result", "op", "ok": true, "id", ...}` for
a command that succeeded; `{"type": "error", "code", "message", "id", "op"?, "field"?}`; `{"type":
"closed", "reason", "last_event_id"}` before the server closes (reconnect with `last_event_id`).

**Commands** (`op`, optional `id` echoed back): `{"op": "ping"}`; `{"op": "filter", "bot": [...],
"type": [...]}` (replaces the filter); `{"op": "send", "bot_id", "to", "text"}` (queues a text message
like `POST /api/v1/bots/{bot_id}/messages`; needs the `send` scope).

**Errors and limits**: `invalid_json`, `invalid_message`, `unknown_op`, `invalid_input` (`field`),
`not_found`, `forbidden` leave the connection open; `frame_too_large` (over `WS_MAX_FRAME`) closes
1009, `protocol_error` 1002, `invalid_utf8` 1007, `too_slow` (more than `SSE_BUFFER` events waiting)
1008. A request without the upgrade is 400 `websocket_required`."""

SSE_EXAMPLE = ("retry: 3000\n: connected\n\nid: 42\nevent: message.in\ndata: {\"id\": 42, \"type\": \"message.in\","
               " \"bot_id\": \"…\", \"payload\": {\"from\": \"4915123456789@s.whatsapp.net\", \"text\": \"hi\"},"
               " \"created_at\": \"2026-12-01T10:00:00+00:00\"}\n\n: keepalive\n\n")

# operationId -> {status: [(name, request, error body's "error" part)]}. The request names a key
# ("full", "read": a key with only the read scope, None: no key) and may use {bot}, {missing}.
_ERRORS: dict[str, dict[int, list[tuple[str, dict[str, Any], dict[str, Any]]]]] = {
    "createBot": {
        400: [("a proxy URL of another scheme",
               {"key": "full", "body": {"name": "Front desk", "transport_options": {"proxy": "ftp://h:21"}}},
               {"code": "invalid_input", "field": "transport_options.proxy",
                "message": "scheme must be one of http, https, socks5"}),
              ("an option that does not exist",
               {"key": "full", "body": {"name": "Front desk", "transport_options": {"socks": "x"}}},
               {"code": "invalid_input", "field": "transport_options.socks",
                "message": "unknown field 'socks'; allowed: auto_start, phone, proxy"}),
              ("a body that is not a JSON object", {"key": "full", "raw": "[1]"},
               {"code": "invalid_json", "message": "request body must be a JSON object"})],
        401: [("no key", {"key": None, "body": {"name": "x"}},
               {"code": "unauthorized", "message": "missing API key: send 'Authorization: Bearer <key>'"})],
        403: [("a key limited to reading", {"key": "read", "body": {"name": "x"}},
               {"code": "forbidden", "message": "this key lacks the scope 'manage' (it has: read)"})],
    },
    "getBot": {
        404: [("an unknown id", {"key": "full", "path": {"bot_id": "{missing}"}},
               {"code": "not_found", "message": "bot not found"})],
    },
    "putRules": {
        400: [("a pattern that can take exponential time",
               {"key": "full", "path": {"bot_id": "{bot}"}, "body": {"rules": [
                   {"match": "keyword", "pattern": "hours", "reply": "9 to 5"},
                   {"match": "keyword", "pattern": "price", "reply": "5 euros"},
                   {"match": "regex", "pattern": "(a+)+", "reply": "boom"}]}},
               {"code": "invalid_input", "field": "rules[2].pattern"}),
              ("a typo in a rule's keys",
               {"key": "full", "path": {"bot_id": "{bot}"},
                "body": {"rules": [{"match": "keyword", "pattern": "hi", "reply": "hello", "enable": False}]}},
               {"code": "invalid_input", "field": "rules[0].enable"})],
    },
    "putAi": {
        400: [("a temperature out of range",
               {"key": "full", "path": {"bot_id": "{bot}"}, "body": {"ai": {"enabled": True, "temperature": 3}}},
               {"code": "invalid_input", "field": "ai.temperature", "message": "must be a number from 0 to 2"})],
    },
    "sendMessage": {
        400: [("a group as recipient",
               {"key": "full", "path": {"bot_id": "{bot}"}, "body": {"to": "120363000000000000@g.us", "text": "hi"}},
               {"code": "invalid_input", "field": "to"}),
              ("a caption without media",
               {"key": "full", "path": {"bot_id": "{bot}"}, "body": {"to": "4915123456789", "text": "hi",
                                                                     "caption": "c"}},
               {"code": "invalid_input", "field": "caption",
                "message": "only goes with media_id (a text message is all text)"})],
        403: [("a key limited to reading",
               {"key": "read", "path": {"bot_id": "{bot}"}, "body": {"to": "4915123456789", "text": "hi"}},
               {"code": "forbidden", "message": "this key lacks the scope 'send' (it has: read)"})],
        404: [("another tenant's (or an unknown) bot",
               {"key": "full", "path": {"bot_id": "{missing}"}, "body": {"to": "4915123456789", "text": "hi"}},
               {"code": "not_found", "message": "bot not found"})],
    },
    "listOutbox": {
        400: [("an unknown state", {"key": "full", "query": {"state": "lost"}},
               {"code": "invalid_input", "field": "state",
                "message": "must be one of dead, pending, sending, sent, held"}),
              ("a page size out of range", {"key": "full", "query": {"limit": "500"}},
               {"code": "invalid_input", "field": "limit", "message": "must be a whole number from 1 to 100"})],
    },
    "retryOutbox": {
        409: [("a row that is not dead", {"key": "full", "path": {"outbox_id": "{queued}"}},
               {"code": "conflict", "message": "only a dead message can be retried; this one is pending"})],
    },
    "createApiKey": {
        400: [("an unknown scope", {"key": "full", "body": {"name": "crm", "scopes": ["admin"]}},
               {"code": "invalid_input", "field": "scopes",
                "message": "unknown scope 'admin'; one of read, send, manage"})],
    },
    "createUser": {
        400: [("not an email address", {"key": "full", "body": {"email": "ana"}},
               {"code": "invalid_input", "field": "email", "message": "must be an email address"})],
    },
    "getBotQr": {
        404: [("a bot that is not started", {"key": "full", "path": {"bot_id": "{bot}"}},
               {"code": "no_qr"})],
    },
    "createWebhook": {
        400: [("a plain http URL", {"key": "full", "body": {"url": "http://hooks.example.com/wabot"}},
               {"code": "invalid_input", "field": "url",
                "message": "must be an https:// URL (plain http is off: WEBHOOKS_ALLOW_HTTP)"}),
              ("a loopback address", {"key": "full", "body": {"url": "https://127.0.0.1/wabot"}},
               {"code": "invalid_input", "field": "url",
                "message": "127.0.0.1 is a loopback address; the platform only connects to public addresses"}),
              ("an event type that matches nothing",
               {"key": "full", "body": {"url": "https://hooks.example.com/wabot",
                                        "event_types": ["message.in", "mesage.out"]}},
               {"code": "invalid_input", "field": "event_types[1]"}),
              ("another tenant's (or an unknown) bot",
               {"key": "full", "body": {"url": "https://93.184.215.14/wabot",
                                        "bot_ids": ["00000000-0000-4000-8000-000000000000"]}},
               {"code": "invalid_input", "field": "bot_ids[0]", "message": "is not one of your bots"})],
        403: [("a key limited to reading", {"key": "read", "body": {"url": "https://hooks.example.com/wabot"}},
               {"code": "forbidden", "message": "this key lacks the scope 'manage' (it has: read)"})],
    },
    "getWebhook": {
        404: [("another tenant's (or an unknown) endpoint", {"key": "full", "path": {"webhook_id": "{missing}"}},
               {"code": "not_found", "message": "webhook not found"})],
    },
    "listWebhookDeliveries": {
        400: [("an unknown state", {"key": "full", "path": {"webhook_id": "{missing}"}, "query": {"state": "lost"}},
               {"code": "invalid_input", "field": "state",
                "message": "must be one of pending, delivering, delivered, failed"}),
              ("a time range that ends before it starts",
               {"key": "full", "path": {"webhook_id": "{missing}"},
                "query": {"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}},
               {"code": "invalid_input", "field": "until", "message": "must be later than since"})],
    },
    "replayWebhookDelivery": {
        404: [("another tenant's (or an unknown) delivery",
               {"key": "full", "path": {"webhook_id": "{missing}", "delivery_id": "{missing}"}},
               {"code": "not_found", "message": "delivery not found"})],
    },
    "streamEvents": {
        400: [("a resume id that is not a number", {"key": "full", "query": {"last_event_id": "abc"}},
               {"code": "invalid_input", "field": "last_event_id",
                "message": "last event id must be a non-negative integer"})],
    },
}

_LINKS = {
    ("createBot", 201): {
        "GetBot": ("getBot", {"bot_id": "$response.body#/id"}),
        "UpdateBot": ("updateBot", {"bot_id": "$response.body#/id"}),
        "DeleteBot": ("deleteBot", {"bot_id": "$response.body#/id"}),
        "SendMessage": ("sendMessage", {"bot_id": "$response.body#/id"}),
        "GetRules": ("getRules", {"bot_id": "$response.body#/id"}),
        "PutRules": ("putRules", {"bot_id": "$response.body#/id"}),
    },
    ("sendMessage", 202): {
        "GetOutboxRow": ("getOutboxRow", {"outbox_id": "$response.body#/outbox_id"}),
        "RetryOutbox": ("retryOutbox", {"outbox_id": "$response.body#/outbox_id"}),
        "ListMessages": ("listMessages", {"bot_id": "$request.path.bot_id", "contact": "$response.body#/to"}),
        "PauseConversation": ("pauseConversation", {"bot_id": "$request.path.bot_id", "contact": "$response.body#/to"}),
        "ResumeConversation": ("resumeConversation",
                               {"bot_id": "$request.path.bot_id", "contact": "$response.body#/to"}),
    },
    ("uploadMedia", 201): {
        "GetMedia": ("getMedia", {"media_id": "$response.body#/id"}),
    },
    ("createWebhook", 201): {
        "GetWebhook": ("getWebhook", {"webhook_id": "$response.body#/id"}),
        "UpdateWebhook": ("updateWebhook", {"webhook_id": "$response.body#/id"}),
        "DeleteWebhook": ("deleteWebhook", {"webhook_id": "$response.body#/id"}),
        "RotateWebhookSecret": ("rotateWebhookSecret", {"webhook_id": "$response.body#/id"}),
        "TestWebhook": ("testWebhook", {"webhook_id": "$response.body#/id"}),
        "ListWebhookDeliveries": ("listWebhookDeliveries", {"webhook_id": "$response.body#/id"}),
        "ReplayFailedWebhookDeliveries": ("replayFailedWebhookDeliveries", {"webhook_id": "$response.body#/id"}),
    },
    ("testWebhook", 202): {
        "GetWebhookDelivery": ("getWebhookDelivery",
                               {"webhook_id": "$request.path.webhook_id", "delivery_id": "$response.body#/id"}),
        "ReplayWebhookDelivery": ("replayWebhookDelivery",
                                  {"webhook_id": "$request.path.webhook_id", "delivery_id": "$response.body#/id"}),
    },
    ("createUser", 201): {
        "GetUser": ("getUser", {"user_id": "$response.body#/id"}),
        "DeleteUser": ("deleteUser", {"user_id": "$response.body#/id"}),
    },
}


# Request limits (web.rate_limits): every operation but this document's may answer 429, and every
# answer of a limited operation carries the RateLimit fields. The example is what
# tests/test_rate_limits.py produces (a key past a burst of 2 writes at 60 a minute).
RATE_LIMITED_EXAMPLE = {"status": 429, "code": "rate_limited",
                        "message": "too many writes for this API key: at most 60 a minute after a burst of 2;"
                                   " retry in 1 second"}
_RATE_LIMIT_HEADERS = {
    "RateLimit-Policy": {
        "description": "the limit this request counted against (draft-ietf-httpapi-ratelimit-headers): "
                       '`"reads"` (GET, HEAD) or `"writes"`, `q` requests a minute (`w=60`) after a burst of '
                       "`wabot-burst`, per API key or dashboard session",
        "schema": {"type": "string"}, "example": '"writes";q=1200;w=60;wabot-burst=300'},
    "RateLimit": {
        "description": "what is left of it: `r` requests may follow at once; `t` seconds until the whole burst is "
                       "back (on a 429: until the next request is allowed, as Retry-After)",
        "schema": {"type": "string"}, "example": '"writes";r=299;t=1'},
}
_RETRY_AFTER = {"description": "whole seconds until a request of this class is allowed again",
                "schema": {"type": "integer", "minimum": 1}, "example": 1}


def info() -> Info:
    return Info(title="wabot API", version=VERSION, description=DESCRIPTION)


def error_examples() -> dict[str, dict[int, list[tuple[str, dict[str, Any], dict[str, Any]]]]]:
    """Every documented error example: operationId → status → (name, request, error)."""
    return _ERRORS


def _operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for item in doc["paths"].values() for op in item.values()
            if isinstance(op, dict) and "operationId" in op}


def complete(generated: dict[str, Any]) -> dict[str, Any]:
    """The library's document with what its models cannot say (see the module docstring)."""
    doc = copy.deepcopy(generated)
    ops = _operations(doc)
    for operation_id, statuses in _ERRORS.items():
        for status, examples in statuses.items():
            content = ops[operation_id]["responses"][str(status)].setdefault("content", {}).setdefault(
                "application/json", {"schema": {"$ref": "#/components/schemas/ErrorBody"}})
            content["examples"] = {
                name.replace(" ", "-"): {"summary": name, "x-request": request,
                                         "value": {"error": {"status": status, **error}, "request_id": "…"}}
                for name, request, error in examples
            }
    for (operation_id, status), links in _LINKS.items():
        ops[operation_id]["responses"][str(status)]["links"] = {
            name: {"operationId": target, "parameters": parameters} for name, (target, parameters) in links.items()}
    ops["streamEvents"]["responses"]["200"]["content"] = {
        "text/event-stream": {"schema": {"type": "string"}, "example": SSE_EXAMPLE}}
    ops["getBotQr"]["responses"]["200"]["content"].update({
        "image/svg+xml": {"schema": {"type": "string"}}, "text/plain": {"schema": {"type": "string"}}})
    ops["getMedia"]["responses"]["200"]["content"] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    ops["uploadMedia"]["requestBody"] = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    doc["paths"]["/api/v1/ws"] = {"get": {
        "tags": ["Live events"], "operationId": "openWebSocket", "summary": "Live events and commands over a WebSocket",
        "description": WEBSOCKET, "security": [{"bearer": ["read"]}],
        "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}, "description": d}
                       for n, d in (("last_event_id", "resume after this event id"), ("bot", "only these bots"),
                                    ("type", "only these event types"), ("token", "the key, for browsers"))],
        "responses": {"101": {"description": "switching protocols: the WebSocket"},
                      "400": {"description": "not an upgrade request (websocket_required)",
                              "content": {"application/json": {
                                  "schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
                      "401": {"description": "no or an unknown key",
                              "content": {"application/json": {
                                  "schema": {"$ref": "#/components/schemas/ErrorBody"}}}}}}}
    doc["paths"]["/api/v1/openapi.json"] = {"get": {
        "tags": ["Tenant"], "operationId": "getOpenApi", "summary": "This document", "security": [],
        "responses": {"200": {"description": "the OpenAPI 3.1 document", "content": {"application/json": {
            "schema": {"type": "object"}}}}}}}
    for item in doc["paths"].values():
        for op in item.values():
            if op["operationId"] == "getOpenApi":
                continue
            op["responses"]["429"] = {
                "description": "too many requests of this class for the key (or session): wait Retry-After seconds",
                "headers": {"Retry-After": _RETRY_AFTER},
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"},
                    "examples": {"past-the-limit": {"summary": "a key past its burst of writes",
                                                    "value": {"error": RATE_LIMITED_EXAMPLE, "request_id": "…"}}}}}}
            for response in op["responses"].values():
                response.setdefault("headers", {}).update(copy.deepcopy(_RATE_LIMIT_HEADERS))
    request_id = {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
                  "description": "your id for this request, echoed in the response and the platform's logs (1–128"
                                 " characters of A-Z a-z 0-9 . _ : -; anything else is replaced by one of ours)"}
    for item in doc["paths"].values():
        for op in item.values():
            op.setdefault("parameters", []).append(request_id)
            for response in op["responses"].values():
                response.setdefault("headers", {})["X-Request-ID"] = {
                    "description": "the request's id", "schema": {"type": "string"}}
    doc["components"]["schemas"].pop("ValidationErrorModel", None)
    return doc


def document() -> dict[str, Any]:
    found = current_app.extensions.get("wabot.openapi")
    if found is None:
        found = current_app.extensions["wabot.openapi"] = complete(cast("OpenAPI", current_app).api_doc)
    return found


blueprint = Blueprint("openapi", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/api/docs/static")


@blueprint.get("/api/v1/openapi.json")
def openapi_json() -> Any:
    return jsonify(document())


@blueprint.get("/api/docs")
def docs_redirect() -> Any:
    return redirect(url_for("openapi.docs"))


@blueprint.get("/api/docs/")
def docs() -> Any:
    return render_template("api_docs.html")
