"""The short path through the ASGI stack for the routes that start streams.

A stream's response lives as long as the stream: every frame between uvicorn and it stays in
memory for thousands of open streams at once, and every send wrapper among them runs once per
token. The routes that start streams have fixed paths, so the application hands them to
:class:`Lanes` before its middleware stack: one frame does what the stack's layers would do for
them (the error boundary, authentication, rate-limit headers, routing, error mapping), and
everything else takes the usual way through Starlette.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay import errors
from tokenrelay.auth.identity import current
from tokenrelay.auth.middleware import check, credential, enter, refuse_http
from tokenrelay.config import AuthSettings
from tokenrelay.http.errors import error_response, internal_error_response
from tokenrelay.http.streaming import CollectedResponse, EventStreamResponse
from tokenrelay.limits import headers as rate_limit
from tokenrelay.ops import requests
from tokenrelay.ops.cors import Cors
from tokenrelay.telemetry import current_request

Handler = Callable[[Request], Awaitable[ASGIApp]]
logger = logging.getLogger("tokenrelay")
# Responses that add the rate-limit headers to their head themselves (limits.headers.take):
# no send wrapper kept for the length of their stream.
WRITE_THEIR_OWN_HEAD = (EventStreamResponse, CollectedResponse)


class Lanes:
    def __init__(
        self, routes: Mapping[tuple[str, str], Handler], auth: AuthSettings, cors: Cors
    ) -> None:
        self.routes = dict(routes)
        """``(method, path)`` to handler."""
        self.auth = auth
        self.cors = cors

    def handler_for(self, scope: Scope) -> Handler | None:
        if scope["type"] != "http":
            return None
        return self.routes.get((scope["method"], scope["path"]))

    async def serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        """What CORSMiddleware, AuthMiddleware, RateLimitHeaders, RequestIds and the router
        would do, in one frame."""
        principal_token = None
        pending, pending_token = rate_limit.collect()
        request_token = requests.enter(scope)
        if self.cors.enabled:
            self.cors.publish(scope)
        try:
            if self.auth.enabled:
                try:
                    principal = await check(scope, credential(scope))
                except errors.TokenRelayError as exc:
                    # A short answer: the wrapper that adds the published headers is cheap.
                    await refuse_http(scope, rate_limit.sending(send, pending), exc)
                    return
                principal_token = enter(principal, scope)
            response = await _respond(handler, scope, receive)
            if not isinstance(response, WRITE_THEIR_OWN_HEAD):
                send = rate_limit.sending(send, pending)
            await response(scope, receive, send)
        finally:
            rate_limit.finish(pending_token)
            current_request.reset(request_token)
            if principal_token is not None:
                current.reset(principal_token)


async def _respond(handler: Handler, scope: Scope, receive: Receive) -> ASGIApp:
    # The request object ends with this frame, not with the stream.
    try:
        return await handler(Request(scope, receive))
    except errors.TokenRelayError as exc:
        return error_response(exc, errors.dialect_of(scope["path"]))
    except Exception:
        # As the application's outermost handler does for every other route.
        logger.exception("unexpected error on %s %s", scope["method"], scope["path"])
        return internal_error_response()
