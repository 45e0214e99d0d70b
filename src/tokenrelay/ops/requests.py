"""``X-Request-Id`` end to end, and when a request arrived.

Each HTTP request and WebSocket gets a :class:`~tokenrelay.telemetry.RequestContext` as it
enters: its id (the client's ``X-Request-Id`` when it sent a usable one, a new one otherwise),
returned on the response, the wire it came in on, its arrival time, and the W3C
``traceparent`` it carried. The upstream request carries the same id
(:func:`tokenrelay.telemetry.upstream_headers`).
"""

from __future__ import annotations

import re
import time
from contextvars import Token

from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay.ids import unique
from tokenrelay.limits import headers as response_head
from tokenrelay.telemetry import RequestContext, current_request

# Printable ASCII without spaces, as proxies generate them (UUIDs, hex, base64url):
# anything else would be a way to write into operators' logs.
VALID_ID = re.compile(r"[!-~]{1,128}")
# The wire a path belongs to: a bounded label for metrics, never the path itself.
WIRES = (
    ("/v1/chat/completions", "openai"),
    ("/v1/messages", "anthropic"),
    ("/v1/responses", "responses"),
    ("/v1/streams", "native"),
    ("/v1/conversations", "conversations"),
    ("/chat/stream", "seed"),
    ("/api/v1/chat/stream", "seed"),
    ("/ws/chat", "websocket"),
)


def new_request_id() -> str:
    return unique("req")


def wire_of(path: str) -> str:
    for prefix, wire in WIRES:
        if path.startswith(prefix):
            return wire
    return "other"


def enter(scope: Scope) -> Token[RequestContext | None]:
    """Make this request's context current; reset ``current_request`` with the token returned."""
    given = traceparent = tracestate = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
        elif name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"tracestate":
            tracestate = value.decode("latin-1")
    request_id = given if given is not None and VALID_ID.fullmatch(given) else new_request_id()
    context = RequestContext(
        request_id,
        wire_of(scope.get("path", "")),
        time.perf_counter(),
        time.time_ns(),
        traceparent,
        tracestate,
    )
    if scope["type"] == "http":
        # On the response head through the same per-request dict as the rate-limit headers,
        # so no send wrapper is kept for a stream's length.
        response_head.publish({"x-request-id": request_id})
    return current_request.set(context)


class RequestIds:
    """Gives every request its context; inside RateLimitHeaders, whose dict carries the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = enter(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(token)
