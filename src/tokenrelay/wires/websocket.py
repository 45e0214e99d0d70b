"""The WebSocket wire: ``WS /ws/chat``, a conversation on one socket.

In (JSON text frames)::

    {"content": "...", "model"?, "max_tokens"?, "temperature"?, "script"?,
     "conversation_id"?}                                                  a new turn
    {"type": "cancel"}                                                    stop the reply
    {"type": "resume", "stream_id": "...", "last_event_id": n}            re-attach after a drop
    {"type": "ping"}

Out: ``stream``, ``queued``, ``token`` (``content``), ``usage``, ``done`` and ``error``
(``code``, ``message``) messages, each with the ``id`` of its event in the stream, so a client
that reconnects can ``resume`` from the last id it saw. Earlier turns on the socket are sent as
context, oldest dropped first once they pass ``limits.ws_history_max_chars``.

With a ``conversation_id`` (on the turn, or ``?conversation_id=`` for the whole socket) the
turn is a stored one instead: the conversation's history is the context, and both messages
are saved as ``POST /v1/conversations/{id}/messages`` saves them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal, assert_never

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocket, WebSocketDisconnect

from tokenrelay import errors
from tokenrelay.chat import ChatOptions, ChatRequest, Message
from tokenrelay.conversations.service import Turn
from tokenrelay.events import (
    TERMINAL,
    Event,
    Failed,
    Finish,
    Opened,
    Queued,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from tokenrelay.http.responses import parse_json, validate
from tokenrelay.http.streaming import MAX_WRITE_CHARS
from tokenrelay.limits.bounds import check_max_tokens, check_messages
from tokenrelay.relay import Relay, Stream
from tokenrelay.relay.log import coalesce
from tokenrelay.services import services_of
from tokenrelay.telemetry import next_message
from tokenrelay.wires.native import usage_fields


class ChatFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    content: str
    model: str | None = None
    conversation_id: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    script: dict[str, Any] | None = None


class Resume(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["resume"]
    stream_id: str
    last_event_id: int = Field(default=0, ge=0)


def to_message(event_id: int, event: Event) -> dict[str, Any]:
    match event:
        case TextDelta(text=text):
            return {"type": "token", "content": text, "id": event_id}
        case Opened(stream_id=stream_id, model=model):
            return {"type": "stream", "stream_id": stream_id, "model": model, "id": event_id}
        case Queued(position=position):
            return {"type": "queued", "position": position, "id": event_id}
        case ReasoningDelta(text=text):
            return {"type": "reasoning", "text": text, "id": event_id}
        case ReasoningSignature(signature=signature):
            return {"type": "reasoning", "signature": signature, "id": event_id}
        case RedactedReasoning(data=data):
            return {"type": "reasoning", "redacted": data, "id": event_id}
        case ToolCallStart(index=index, id=call_id, name=name):
            # ``id`` is the event's on this wire, so the call's own id is ``call_id``.
            return {
                "type": "tool_call",
                "index": index,
                "call_id": call_id,
                "name": name,
                "id": event_id,
            }
        case ToolCallDelta(index=index, arguments=arguments):
            return {"type": "tool_call", "index": index, "arguments": arguments, "id": event_id}
        case ToolCallEnd(index=index):
            return {"type": "tool_call", "index": index, "done": True, "id": event_id}
        case Usage():
            return {"type": "usage", **usage_fields(event), "id": event_id}
        case Finish(reason=reason):
            return {"type": "done", "finish_reason": reason, "id": event_id}
        case Failed(error=error):
            return error_message(error) | {"id": event_id}
        case _:
            assert_never(event)


def error_message(error: errors.TokenRelayError) -> dict[str, Any]:
    return {"type": "error", "code": error.code, "message": error.message}


class ChatSocket:
    def __init__(self, websocket: WebSocket, relay: Relay) -> None:
        self.websocket = websocket
        self.relay = relay
        self.settings = relay.settings
        self.owner: str | None = websocket.scope.get("user")
        self.conversation_id = websocket.query_params.get("conversation_id")
        self.history: list[Message] = []
        self.follower: asyncio.Task[None] | None = None
        self.current: Stream | None = None

    async def run(self) -> None:
        await self.websocket.accept()
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text") or message.get("bytes") or b""
                if len(raw) > self.settings.limits.ws_max_frame_bytes:
                    await self.websocket.close(1009, "message too big")
                    return
                try:
                    await self.handle(parse_json(raw))
                except errors.TokenRelayError as exc:
                    await self.send(error_message(exc))
        except WebSocketDisconnect:
            return
        finally:
            if self.follower is not None:
                self.follower.cancel()

    async def handle(self, data: Any) -> None:
        kind = data.get("type", "message") if isinstance(data, dict) else None
        if kind == "message":
            await self.start(validate(ChatFrame, data))
        elif kind == "cancel":
            if self.current is not None:
                self.current.cancel(errors.Cancelled("the reply was cancelled by the client"))
        elif kind == "resume":
            resume = validate(Resume, data)
            stream = await self.relay.find(resume.stream_id, self.owner)
            self._follow(stream, resume.last_event_id, turn=None)
        elif kind == "ping":
            await self.send({"type": "pong"})
        elif kind == "auth":
            # Already authenticated (by header, or auth is off): clients may always send it.
            return
        else:
            raise errors.InvalidRequest(
                "expected a JSON object with content, or type cancel, resume or ping"
            )

    def _check_idle(self) -> None:
        if self.follower is not None and not self.follower.done():
            raise errors.InvalidRequest("a reply is still streaming; cancel it first")

    async def start(self, turn: ChatFrame) -> None:
        # Checked before a stream starts, so a refused turn costs no generation.
        self._check_idle()
        next_message()
        conversation_id = turn.conversation_id or self.conversation_id
        options = ChatOptions(
            max_tokens=turn.max_tokens, temperature=turn.temperature, script=turn.script
        )
        if conversation_id is not None:
            conversations = services_of(self.websocket).conversations
            stored = Turn(turn.content, turn.model, options)
            started = await conversations.take_turn(self.owner, conversation_id, stored)
            reply_id = started.reply.id
            # The turn's last frame only once its reply is stored, as on the HTTP wire: a
            # client that lists the messages after it never finds the reply still streaming.
            self._follow(
                started.stream,
                0,
                turn=None,
                before_end=lambda: conversations.reply_stored(reply_id),
            )
            return
        limits = self.settings.limits
        user = Message(role="user", content=turn.content)
        messages = [*self.history, user]
        check_messages(messages, limits)
        check_max_tokens(turn.max_tokens, limits)
        request = ChatRequest(turn.model or "", messages, options)
        stream = await self.relay.open(
            request, owner=self.owner, linger=self.settings.streams.resume_grace
        )
        self._follow(stream, 0, turn=user)

    def _follow(
        self,
        stream: Stream,
        offset: int,
        turn: Message | None,
        before_end: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._check_idle()
        self.current = stream
        self.follower = asyncio.create_task(self._relay(stream, offset, turn, before_end))

    async def _relay(
        self,
        stream: Stream,
        offset: int,
        turn: Message | None,
        before_end: Callable[[], Awaitable[None]] | None,
    ) -> None:
        log = stream.log
        stream.attach()
        try:
            while True:
                if len(log) > offset:
                    batch = log.read(offset, MAX_WRITE_CHARS)
                    for event_id, event in coalesce(batch, offset + 1):
                        if before_end is not None and isinstance(event, TERMINAL):
                            await before_end()
                        await self.send(to_message(event_id, event))
                    offset += len(batch)
                    continue
                if log.closed:
                    break
                await log.wait(offset)
        except (TimeoutError, WebSocketDisconnect, RuntimeError):
            # The client stopped reading or went away; the stream lingers for a resume.
            with contextlib.suppress(Exception):
                await self.websocket.close(1011, "send timeout")
            return
        finally:
            stream.detach()
        if turn is not None:
            self._remember(turn, Message(role="assistant", content=log.text()))

    def _remember(self, user: Message, reply: Message) -> None:
        self.history += [user, reply]
        budget = self.settings.limits.ws_history_max_chars
        while self.history and sum(m.size() for m in self.history) > budget:
            del self.history[:2]

    async def send(self, message: dict[str, Any]) -> None:
        async with asyncio.timeout(self.settings.streams.send_timeout):
            await self.websocket.send_text(orjson.dumps(message).decode())


async def chat_socket(websocket: WebSocket) -> None:
    relay = services_of(websocket).relay
    owner: str | None = websocket.scope.get("user")
    # Per instance: each socket holds a connection and a task for as long as it stays open.
    open_sockets: Counter[str | None] = relay.sockets
    if open_sockets[owner] >= relay.settings.limits.max_websockets_per_user:
        await websocket.accept()
        await websocket.close(1013, "too many WebSockets open for this user")
        return
    open_sockets[owner] += 1
    try:
        await ChatSocket(websocket, relay).run()
    finally:
        open_sockets[owner] -= 1
        if not open_sockets[owner]:
            del open_sockets[owner]
