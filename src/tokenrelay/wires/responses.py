"""OpenAI's Responses wire: ``POST /v1/responses`` and the stored responses' routes.

Any configured model answers, whatever its upstream speaks: the stream's events become
Responses events (:mod:`tokenrelay.responses.output`), each ``event: <type>`` with a
``sequence_number`` counted from 0 over the whole stream, so that a background response
streamed again with ``starting_after`` (``GET /v1/responses/{id}?stream=true``) continues
exactly where its client left: the encoder replays the log from its start and skips what the
client has. A foreground stream stops when its client leaves, as OpenAI's does; a background
one goes on, and can be polled, streamed again and cancelled from any instance.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tokenrelay import errors
from tokenrelay.events import Event
from tokenrelay.http.responses import JSONResponse, read_json, validate
from tokenrelay.http.streaming import CollectedResponse, EventStreamResponse
from tokenrelay.relay.stream import Stream
from tokenrelay.responses import ResponseBuilder, ResponseHead, build
from tokenrelay.services import services_of
from tokenrelay.store.responses import ResponseRecord
from tokenrelay.wires.responses_body import (
    InputItem,
    ItemReference,
    ResponsesBody,
    chat_request,
    parse_items,
    stored_items,
    to_messages,
)

TRUE = ("true", "1")
MAX_LISTED = 100


class ResponsesEncoder:
    """The Responses events of a stream's log, from its first event, as SSE; those numbered up
    to ``starting_after`` are left out (the client has them)."""

    __slots__ = ("_builder", "_next", "starting_after")

    def __init__(self, head: ResponseHead, starting_after: int = -1) -> None:
        self._builder = ResponseBuilder(head)
        self._next = 0
        self.starting_after = starting_after

    def encode(self, events: list[Event], first_id: int) -> bytes:
        # Never coalesced: each log event is always the same Responses events, so the
        # numbering is the same whatever the batches a reader happened to read.
        out: list[bytes] = []
        for event in events:
            for payload in self._builder.feed(event):
                number = self._next
                self._next += 1
                if number <= self.starting_after:
                    continue
                payload["sequence_number"] = number
                kind: str = payload["type"]
                out.append(b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(payload)))
        return b"".join(out)


def event_count(head: ResponseHead, events: Iterable[Event]) -> int:
    builder = ResponseBuilder(head)
    return sum(len(builder.feed(event)) for event in events)


async def create_response(request: Request) -> Response | EventStreamResponse | CollectedResponse:
    services = services_of(request)
    settings = services.settings
    responses = services.responses
    owner = request.scope.get("user")
    body = validate(ResponsesBody, await read_json(request, settings.limits.max_body_bytes))
    store = body.store is not False
    if body.background and not store:
        raise errors.InvalidRequest("background: a background response must be stored (store)")
    items = body.items()
    context = []
    if body.previous_response_id is not None:
        earlier = await responses.context(owner, body.previous_response_id)
        context = to_messages(parse_items(earlier, "previous_response_id"))
    items = await _resolved(request, items)
    chat = chat_request(body, items, settings.limits, context=context)
    model, _ = services.relay.provider_for(chat.model)
    head = responses.new_head(
        model, background=bool(body.background), store=store, settings=body.settings()
    )
    stream = await responses.start(
        head, chat, owner=owner, input_items=stored_items(items, head.input_prefix)
    )
    if body.stream:
        return EventStreamResponse(stream, ResponsesEncoder(head), settings.streams, offset=0)
    if body.background:
        return JSONResponse(build(head, stream.log.events).snapshot())

    async def render(stream: Stream) -> tuple[int, bytes]:
        return 200, orjson.dumps(build(head, stream.log.events).snapshot())

    return CollectedResponse(stream, render)


async def _resolved(request: Request, items: list[InputItem]) -> list[InputItem]:
    """``items`` with each ``item_reference`` replaced by the stored item it names (kept, and
    stored, as the item itself, so that a later ``previous_response_id`` reads it whole)."""
    wanted = [item.id for item in items if isinstance(item, ItemReference)]
    if not wanted:
        return items
    found = await services_of(request).responses.referenced(request.scope.get("user"), wanted)
    named = dict(zip(found, parse_items(list(found.values()), "input"), strict=True))
    return [named.get(item.id, item) if isinstance(item, ItemReference) else item for item in items]


async def get_response(request: Request) -> Response | EventStreamResponse:
    services = services_of(request)
    record = await services.responses.get(
        request.scope.get("user"), request.path_params["response_id"]
    )
    if request.query_params.get("stream", "").lower() in TRUE:
        return await _stream_again(request, record)
    return JSONResponse(await services.responses.current(record))


async def _stream_again(request: Request, record: ResponseRecord) -> EventStreamResponse:
    services = services_of(request)
    if not record.background:
        raise errors.InvalidRequest(
            "stream: only a background response can be streamed again (background: true)"
        )
    after = _starting_after(request)
    stream = await services.responses.stream_of(record)
    if stream is None:
        body = await services.responses.current(record)
        if body["status"] in ("queued", "in_progress"):
            raise errors.StreamLogUnavailable(
                f"response {record.id!r} is starting; stream it again shortly", retry_after=1
            )
        retention = services.settings.streams.retention
        raise errors.InvalidRequest(
            f"response {record.id!r} ended more than {retention:g}s ago and its events are no "
            "longer kept (streams.retention); GET it without stream=true for its final object"
        )
    head = ResponseHead.from_json(record.head)
    if stream.log.closed:
        count = event_count(head, stream.log.events)
        if after >= count:
            raise errors.InvalidRequest(
                f"starting_after: {after} is past the response's last event ({count - 1})"
            )
    return EventStreamResponse(
        stream, ResponsesEncoder(head, after), services.settings.streams, offset=0
    )


def _starting_after(request: Request) -> int:
    raw = request.query_params.get("starting_after")
    if raw is None or raw == "":
        return -1
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise errors.InvalidRequest("starting_after must be a non-negative integer")
    return int(raw)


async def cancel_response(request: Request) -> Response:
    services = services_of(request)
    record = await services.responses.get(
        request.scope.get("user"), request.path_params["response_id"]
    )
    return JSONResponse(await services.responses.cancel(record))


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    await services_of(request).responses.delete(request.scope.get("user"), response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def list_input_items(request: Request) -> Response:
    services = services_of(request)
    record = await services.responses.get(
        request.scope.get("user"), request.path_params["response_id"]
    )
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.InvalidRequest("order must be asc or desc")
    limit = _limit(query.get("limit"))
    items: list[dict[str, Any]] = list(record.input_items)
    if order == "desc":
        items.reverse()
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise errors.InvalidRequest(f"after: item {after!r} is not an input of this response")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LISTED:
        raise errors.InvalidRequest(f"limit must be an integer from 1 to {MAX_LISTED}")
    return int(raw)
