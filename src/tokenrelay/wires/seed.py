"""The seed-style SSE wire of the classic FastAPI-tutorial client, unchanged.

``POST /chat/stream`` (and ``/api/v1/chat/stream``) with ``{"messages", "model"?,
"max_tokens"?}`` answers ``data: {"token": …}`` lines, then ``data: {"done": true,
"finish_reason": …}``, or ``data: {"error": …, "code": …}``. No ids, no event names.
"""

from __future__ import annotations

from typing import assert_never

import orjson
from starlette.requests import Request

from tokenrelay import errors
from tokenrelay.events import (
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
from tokenrelay.http.bodies import ChatFields
from tokenrelay.http.responses import read_json, validate
from tokenrelay.http.streaming import EventStreamResponse
from tokenrelay.relay.log import coalesce
from tokenrelay.services import services_of


class SeedEncoder:
    def encode(self, events: list[Event], first_id: int) -> bytes:
        out: list[bytes] = []
        for _, event in coalesce(events, first_id):
            match event:
                case TextDelta(text=text):
                    out.append(b'data: {"token":' + orjson.dumps(text) + b"}\n\n")
                case Finish(reason=reason):
                    payload = {"done": True, "finish_reason": reason}
                    out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
                case Failed(error=error):
                    payload = {"error": error.message, "code": error.code}
                    out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
                case (
                    Opened()
                    | Queued()
                    | Usage()
                    | ReasoningDelta()
                    | ReasoningSignature()
                    | RedactedReasoning()
                    | ToolCallStart()
                    | ToolCallDelta()
                    | ToolCallEnd()
                ):
                    # Text only: its clients know no other line, and its requests no tools.
                    pass
                case _:
                    assert_never(event)
        return b"".join(out)


async def chat_stream(request: Request) -> EventStreamResponse:
    relay = services_of(request).relay
    settings = relay.settings
    body = validate(ChatFields, await read_json(request, settings.limits.max_body_bytes))
    chat = body.to_request(settings.limits)
    used = chat.features()
    if used:
        # Its clients could not read a tool call or reasoning: ask for them on another wire.
        raise errors.InvalidRequest(
            f"{next(iter(used.values()))}: the seed-style wire is text-only;"
            " use /v1/chat/completions or /v1/streams"
        )
    stream = await relay.open(chat, owner=request.scope.get("user"))
    return EventStreamResponse(stream, SeedEncoder(), settings.streams, offset=1)
