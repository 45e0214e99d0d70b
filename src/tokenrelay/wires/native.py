"""The native SSE wire: resumable, multi-viewer streams that ``EventSource`` understands.

``POST /v1/streams`` starts a generation and follows it; ``GET /v1/streams/{sid}`` attaches
(again) from ``Last-Event-ID``; ``DELETE /v1/streams/{sid}`` stops it. Every event carries
``id: n`` (its place in the stream's log) and ``event: name``; a coalesced ``token`` frame
carries the id of the last delta in it, so resuming never repeats or skips text.
"""

from __future__ import annotations

import asyncio
from typing import assert_never

import orjson
from starlette.requests import Request
from starlette.responses import Response

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
from tokenrelay.http.responses import JSONResponse, read_json, validate
from tokenrelay.http.streaming import EventStreamResponse
from tokenrelay.relay.log import coalesce
from tokenrelay.services import services_of


def _frame(event_id: int, name: bytes, data: object) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, name, orjson.dumps(data))


class NativeEncoder:
    def encode(self, events: list[Event], first_id: int) -> bytes:
        return b"".join(_frame(i, *_named(event)) for i, event in coalesce(events, first_id))


def _named(event: Event) -> tuple[bytes, dict[str, object]]:
    match event:
        case TextDelta(text=text):
            return b"token", {"text": text}
        case Opened(stream_id=stream_id, model=model):
            return b"stream", {"stream_id": stream_id, "model": model}
        case Queued(position=position):
            return b"queued", {"position": position}
        case ReasoningDelta(text=text):
            return b"reasoning", {"text": text}
        case ReasoningSignature(signature=signature):
            return b"reasoning", {"signature": signature}
        case RedactedReasoning(data=data):
            return b"reasoning", {"redacted": data}
        case ToolCallStart(index=index, id=call_id, name=name):
            return b"tool_call", {"index": index, "id": call_id, "name": name}
        case ToolCallDelta(index=index, arguments=arguments):
            return b"tool_call", {"index": index, "arguments": arguments}
        case ToolCallEnd(index=index):
            return b"tool_call", {"index": index, "done": True}
        case Usage():
            return b"usage", usage_fields(event)
        case Finish(reason=reason):
            return b"done", {"finish_reason": reason}
        case Failed(error=error):
            return b"error", {"code": error.code, "message": error.message}
        case _:
            assert_never(event)


def usage_fields(usage: Usage) -> dict[str, object]:
    """Counts, with the details only where the provider reported any."""
    fields: dict[str, object] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }
    for name in ("cached_tokens", "cache_creation_tokens", "reasoning_tokens"):
        value = getattr(usage, name)
        if value:
            fields[name] = value
    return fields


def last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise errors.InvalidRequest("Last-Event-ID must be a non-negative integer")
    return int(raw)


async def start_stream(request: Request) -> EventStreamResponse:
    relay = services_of(request).relay
    settings = relay.settings
    body = validate(ChatFields, await read_json(request, settings.limits.max_body_bytes))
    chat = body.to_request(settings.limits)
    stream = await relay.open(
        chat, owner=request.scope.get("user"), linger=settings.streams.resume_grace
    )
    return EventStreamResponse(stream, NativeEncoder(), settings.streams)


async def attach_stream(request: Request) -> EventStreamResponse:
    relay = services_of(request).relay
    stream = await relay.find(request.path_params["stream_id"], request.scope.get("user"))
    offset = last_event_id(request)
    if offset > len(stream.log.events) and stream.log.closed:
        raise errors.InvalidRequest(
            f"Last-Event-ID {offset} is past the end of the stream ({len(stream.log.events)})"
        )
    return EventStreamResponse(
        stream,
        NativeEncoder(),
        relay.settings.streams,
        offset=offset,
    )


async def cancel_stream(request: Request) -> Response:
    relay = services_of(request).relay
    stream = await relay.find(request.path_params["stream_id"], request.scope.get("user"))
    cancelled = stream.cancel(errors.Cancelled("the stream was cancelled by a client"))
    if stream.task is not None:
        # Answer once the generation has really stopped, so the caller can rely on it.
        await asyncio.wait([stream.task], timeout=5)
    return JSONResponse({"stream_id": stream.id, "cancelled": cancelled, "status": stream.status})
