"""``GET /openapi.json``: an OpenAPI 3.1 document of the HTTP API, built from the request models.

Bodies are the pydantic models the routes validate with (their JSON Schema is 2020-12, the
dialect OpenAPI 3.1 uses), so the document cannot drift from what the server accepts. Answers
are described as the wires give them: JSON objects, SSE streams, and the one error shape
``{"error": {...}}`` for every 4xx and 5xx. The WebSocket wire (``/ws/chat``) is not HTTP and
is left to the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay.api.admin import KeyRequest
from tokenrelay.api.conversations import ConversationChanges, NewConversation, NewMessage
from tokenrelay.http.bodies import ChatFields
from tokenrelay.http.responses import JSONResponse
from tokenrelay.wires.anthropic_body import MessagesBody
from tokenrelay.wires.openai import CompletionBody
from tokenrelay.wires.responses_body import ResponsesBody

JSON = "application/json"
SSE = "text/event-stream"
OBJECT: dict[str, Any] = {"type": "object"}
# One event of an SSE answer (``data`` is JSON text on every wire but the OpenAI one's last
# ``[DONE]``); the event names and payloads are in the README, per wire.
EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
PAGE = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}
AFTER = {"name": "after", "in": "query", "schema": {"type": "string"}}
ORDER = {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}}


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    body: type[BaseModel] | None = None
    answers: tuple[str, ...] = (JSON,)
    status: str = "200"
    query: tuple[dict[str, Any], ...] = ()


OPERATIONS = (
    Operation(
        "post", "/v1/chat/completions", "OpenAI chat completion", CompletionBody, (JSON, SSE)
    ),
    Operation("get", "/v1/models", "the configured models"),
    Operation("post", "/v1/messages", "Anthropic Messages", MessagesBody, (JSON, SSE)),
    Operation("post", "/v1/responses", "OpenAI Responses", ResponsesBody, (JSON, SSE)),
    Operation(
        "get",
        "/v1/responses/{response_id}",
        "a stored response; with stream=true, its events again (background)",
        answers=(JSON, SSE),
        query=(
            {"name": "stream", "in": "query", "schema": {"enum": ["true", "false"]}},
            {"name": "starting_after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        ),
    ),
    Operation("delete", "/v1/responses/{response_id}", "delete a stored response"),
    Operation("post", "/v1/responses/{response_id}/cancel", "cancel a background response"),
    Operation(
        "get",
        "/v1/responses/{response_id}/input_items",
        "a stored response's input items",
        query=(PAGE, AFTER, ORDER),
    ),
    Operation("post", "/v1/streams", "start a native stream", ChatFields, (SSE,)),
    Operation("get", "/v1/streams/{stream_id}", "attach to a stream", answers=(SSE,)),
    Operation("delete", "/v1/streams/{stream_id}", "cancel a stream"),
    Operation("post", "/chat/stream", "seed-style stream", ChatFields, (SSE,)),
    Operation("post", "/api/v1/chat/stream", "seed-style stream", ChatFields, (SSE,)),
    Operation("post", "/v1/conversations", "create a conversation", NewConversation, status="201"),
    Operation("get", "/v1/conversations", "list conversations", query=(PAGE, AFTER)),
    Operation("get", "/v1/conversations/{conversation_id}", "read a conversation"),
    Operation(
        "patch", "/v1/conversations/{conversation_id}", "change a conversation", ConversationChanges
    ),
    Operation("delete", "/v1/conversations/{conversation_id}", "delete a conversation"),
    Operation(
        "get",
        "/v1/conversations/{conversation_id}/messages",
        "list a conversation's messages",
        query=(PAGE, AFTER, ORDER),
    ),
    Operation(
        "post",
        "/v1/conversations/{conversation_id}/messages",
        "take a turn; the reply streams",
        NewMessage,
        (SSE,),
    ),
    Operation("post", "/v1/admin/keys", "issue a key (shown once)", KeyRequest, status="201"),
    Operation(
        "get",
        "/v1/admin/keys",
        "list keys",
        query=(
            {"name": "owner", "in": "query", "schema": {"type": "string"}},
            {"name": "include_revoked", "in": "query", "schema": {"enum": ["true", "false"]}},
        ),
    ),
    Operation("delete", "/v1/admin/keys/{key_id}", "revoke a key"),
    Operation(
        "get",
        "/v1/admin/usage",
        "tokens per user",
        query=tuple(
            {"name": name, "in": "query", "schema": {"type": "string"}}
            for name in ("since", "until", "user")
        ),
    ),
    Operation("get", "/healthz", "liveness"),
    Operation("get", "/readyz", "readiness (the database answers)"),
)
OPEN = frozenset({"/healthz", "/readyz"})
ERROR = {
    "description": "an error: OpenAI's shape, or Anthropic's on /v1/messages",
    "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _operation(op: Operation) -> dict[str, Any]:
    content = {kind: {"schema": OBJECT if kind == JSON else EVENT} for kind in op.answers}
    spec: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.method + "_" + "_".join(p.strip("{}") for p in op.path.split("/") if p),
        "responses": {
            op.status: {"description": "done", "content": content},
            "4XX": ERROR,
            "5XX": ERROR,
        },
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(op.path)
    ]
    parameters += [dict(query) for query in op.query]
    if parameters:
        spec["parameters"] = parameters
    if op.body is not None:
        schema = {"$ref": f"#/components/schemas/{op.body.__name__}"}
        spec["requestBody"] = {"required": True, "content": {JSON: {"schema": schema}}}
    if op.path in OPEN:
        spec["security"] = []
    return spec


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


@cache
def document() -> dict[str, Any]:
    models = sorted({op.body for op in OPERATIONS if op.body is not None}, key=lambda m: m.__name__)
    _, defs = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Error"] = {"type": "object", "required": ["error"], "properties": {"error": OBJECT}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tokenrelay", "version": _version()},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenrelay")
    except PackageNotFoundError:
        return "0"


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())
