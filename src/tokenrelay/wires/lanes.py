"""The short path through the ASGI stack for the routes that start streams.

A stream's response lives as long as the stream: every frame between uvicorn and it stays in
memory, and every send wrapper among them runs once per token. Starlette's exception layer and
router add six frames and two send wrappers to each stream. The routes that start streams have
fixed paths, so this middleware, the last before that layer, answers them itself: the same
handlers, errors mapped as the exception handlers would, and anything unexpected left to
propagate to the application's outermost handler (a logged JSON 500), as from any route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay import errors
from tokenrelay.wires.http import error_response

Handler = Callable[[Request], Awaitable[ASGIApp]]


class Lanes:
    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], Handler]) -> None:
        self.app = app
        self.routes = dict(routes)
        """``(method, path)`` to handler."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
        if handler is None:
            await self.app(scope, receive, send)
            return
        response = await _respond(handler, scope, receive)
        await response(scope, receive, send)


async def _respond(handler: Handler, scope: Scope, receive: Receive) -> ASGIApp:
    # The request object ends with this frame, not with the stream.
    try:
        return await handler(Request(scope, receive))
    except errors.TokenRelayError as exc:
        return error_response(exc)
