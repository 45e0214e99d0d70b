"""The seed-style SSE wire of the classic FastAPI-tutorial client, unchanged.

``POST /chat/stream`` (and ``/api/v1/chat/stream``) with ``{"messages", "model"?,
"max_tokens"?}`` answers ``data: {"token": …}`` lines, then ``data: {"done": true,
"finish_reason": …}``, or ``data: {"error": …, "code": …}``. No ids, no event names.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request

from tokenrelay.events import Event, Failed, Finish, TextDelta
from tokenrelay.http.bodies import ChatFields
from tokenrelay.http.responses import read_json, validate
from tokenrelay.http.streaming import EventStreamResponse
from tokenrelay.relay.log import coalesce
from tokenrelay.services import services_of


class SeedEncoder:
    def encode(self, events: list[Event], first_id: int) -> bytes:
        out: list[bytes] = []
        for _, event in coalesce(events, first_id):
            if isinstance(event, TextDelta):
                out.append(b'data: {"token":' + orjson.dumps(event.text) + b"}\n\n")
            elif isinstance(event, Finish):
                payload = {"done": True, "finish_reason": event.reason}
                out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
            elif isinstance(event, Failed):
                payload = {"error": event.error.message, "code": event.error.code}
                out.append(b"data: " + orjson.dumps(payload) + b"\n\n")
        return b"".join(out)


async def chat_stream(request: Request) -> EventStreamResponse:
    relay = services_of(request).relay
    settings = relay.settings
    body = validate(ChatFields, await read_json(request, settings.limits.max_body_bytes))
    stream = await relay.open(body.to_request(settings.limits), owner=request.scope.get("user"))
    return EventStreamResponse(stream, SeedEncoder(), settings.streams, offset=1)
