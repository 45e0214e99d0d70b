"""Stored conversations over HTTP.

``POST /v1/conversations`` · ``GET /v1/conversations`` (newest first) ·
``GET|PATCH|DELETE /v1/conversations/{id}`` · ``GET /v1/conversations/{id}/messages``
(oldest first) · ``POST /v1/conversations/{id}/messages`` (streams the reply on the native
wire, resumable through ``/v1/streams/{sid}`` like any native stream).

Lists are pages of ``limit`` items (1-100; default 20 conversations, 100 messages) with a
cursor: pass the id of the last item you got as ``after`` for the next page. The answer is
``{"object": "list", "data", "first_id", "last_id", "has_more"}``, as OpenAI's lists are. A
cursor, unlike an offset, neither repeats nor skips items when new ones arrive between pages.

A new message's ``content`` is text or a list of parts: ``text``, ``image_url`` and
``tool_result`` (``{"type": "tool_result", "tool_call_id", "content"}``, answering a call of
the reply before); the body takes ``tools`` and the other OpenAI generation fields. A stored
message shows its text as ``content`` and, when it is more than text, all of it as ``parts``
(tool calls and reasoning of a reply too; see :mod:`tokenrelay.conversations.parts`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors
from tokenrelay.chat import ImagePart, Part, TextPart, ToolResult
from tokenrelay.conversations.service import Turn
from tokenrelay.http.bodies import ImageURL, RequestOptions
from tokenrelay.http.responses import JSONResponse, read_json, validate
from tokenrelay.http.streaming import EventStreamResponse
from tokenrelay.services import services_of
from tokenrelay.store.repository import ConversationRecord, MessageRecord, Page, Store
from tokenrelay.wires.native import NativeEncoder

MAX_PAGE = 100


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=200)
    model: str | None = None
    system: str | None = None


class ConversationChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=200)
    model: str | None = None


class TurnPart(BaseModel):
    """One part of a user's message: what a user may send (never a call, nor reasoning)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "image_url", "tool_result"]
    text: str | None = None
    image_url: ImageURL | None = None
    tool_call_id: str | None = Field(default=None, min_length=1)
    content: str | None = None

    @model_validator(mode="after")
    def _has_its_fields(self) -> TurnPart:
        needs = {"text": ("text",), "image_url": ("image_url",)}
        for name in needs.get(self.type, ("tool_call_id", "content")):
            if getattr(self, name) is None:
                raise ValueError(f"a {self.type} part needs {name}")
        return self

    def to_part(self) -> Part:
        if self.image_url is not None and self.type == "image_url":
            return ImagePart(self.image_url.url, self.image_url.detail)
        if self.type == "tool_result":
            return ToolResult(self.tool_call_id or "", self.content or "")
        return TextPart(self.text or "")


class NewMessage(RequestOptions):
    model_config = ConfigDict(extra="forbid")

    content: str | list[TurnPart] = Field(min_length=1)

    def to_turn(self) -> Turn:
        content = self.content
        if isinstance(content, str):
            return Turn(content, self.model, self.to_options())
        return Turn(tuple(part.to_part() for part in content), self.model, self.to_options())


def conversation_json(record: ConversationRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "conversation",
        "title": record.title,
        "model": record.model,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }


def message_json(record: MessageRecord) -> dict[str, Any]:
    usage = None
    if record.prompt_tokens is not None or record.completion_tokens is not None:
        usage = {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
        }
    return {
        "id": record.id,
        "object": "conversation.message",
        "conversation_id": record.conversation_id,
        "role": record.role,
        "content": record.content,
        "parts": record.parts,
        "status": record.status,
        "error_code": record.error_code,
        "finish_reason": record.finish_reason,
        "model": record.model,
        "stream_id": record.stream_id,
        "usage": usage,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }


def _page_json(page: Page[Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": page.has_more,
    }


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise errors.InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


def _store(request: Request) -> Store:
    store = services_of(request).store
    return store


def _owner(request: Request) -> str | None:
    owner: str | None = request.scope.get("user")
    return owner


async def create_conversation(request: Request) -> Response:
    body = validate(NewConversation, await _body(request, empty_ok=True))
    relay = services_of(request).relay
    if body.model is not None:
        relay.provider_for(body.model)
    limits = relay.settings.limits
    if body.system is not None and len(body.system) > limits.max_system_chars:
        raise errors.PayloadTooLarge(
            f"system is {len(body.system)} characters (the limit is {limits.max_system_chars})"
        )
    # Stored data is spent too: a new conversation counts against the user's request rate.
    gate = services_of(request).gate
    await gate.count_request(_owner(request))
    record = await _store(request).create_conversation(
        _owner(request),
        title=body.title,
        model=body.model,
        system=body.system,
        most=limits.max_conversations_per_user,
    )
    return JSONResponse(conversation_json(record), status_code=201)


async def list_conversations(request: Request) -> Response:
    page = await _store(request).list_conversations(
        _owner(request), limit=_limit(request, 20), after=request.query_params.get("after")
    )
    return JSONResponse(_page_json(page, [conversation_json(c) for c in page.items]))


async def get_conversation(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    record = await _store(request).get_conversation(_owner(request), conversation_id)
    return JSONResponse(conversation_json(record))


async def update_conversation(request: Request) -> Response:
    data = await _body(request)
    body = validate(ConversationChanges, data)
    if body.model is not None:
        relay = services_of(request).relay
        relay.provider_for(body.model)
    # Only the fields the client sent change; ``null`` clears one.
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    record = await _store(request).update_conversation(
        _owner(request), request.path_params["conversation_id"], **changes
    )
    return JSONResponse(conversation_json(record))


async def delete_conversation(request: Request) -> Response:
    conversation_id = request.path_params["conversation_id"]
    stream_ids = await _store(request).delete_conversation(_owner(request), conversation_id)
    conversations = services_of(request).conversations
    reason = errors.Cancelled("the conversation was deleted")
    conversations.cancel(conversation_id, reason)
    # A reply streaming on another instance is stopped there.
    await conversations.relay.cancel_anywhere(stream_ids, _owner(request), reason)
    return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def list_messages(request: Request) -> Response:
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise errors.InvalidRequest("order must be asc or desc")
    page = await _store(request).list_messages(
        _owner(request),
        request.path_params["conversation_id"],
        limit=_limit(request, 100),
        after=request.query_params.get("after"),
        newest_first=order == "desc",
    )
    return JSONResponse(_page_json(page, [message_json(m) for m in page.items]))


async def post_message(request: Request) -> EventStreamResponse:
    conversations = services_of(request).conversations
    body = validate(NewMessage, await _body(request))
    started = await conversations.take_turn(
        _owner(request), request.path_params["conversation_id"], body.to_turn()
    )
    stream = started.stream
    return EventStreamResponse(
        stream,
        NativeEncoder(),
        conversations.settings.streams,
        headers={
            "X-Conversation-Id": started.user.conversation_id,
            "X-Message-Id": started.reply.id,
        },
        # A client that has read the turn to its end finds the reply stored.
        before_end=lambda: conversations.reply_stored(started.reply.id),
    )


async def _body(request: Request, *, empty_ok: bool = False) -> Any:
    no_body = request.headers.get("content-length", "0") == "0"
    if empty_ok and no_body and "transfer-encoding" not in request.headers:
        return {}
    relay = services_of(request).relay
    return await read_json(request, relay.settings.limits.max_body_bytes)
