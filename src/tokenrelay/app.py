"""The ASGI application: services made in the lifespan, routes, and one error boundary."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from tokenrelay import errors
from tokenrelay.api import admin, conversations, health, openapi
from tokenrelay.auth import AuthMiddleware
from tokenrelay.config import Settings, load_settings
from tokenrelay.http.errors import error_response, internal_error_response
from tokenrelay.limits import RateLimitHeaders
from tokenrelay.ops.cors import Cors
from tokenrelay.ops.requests import RequestIds
from tokenrelay.services import running
from tokenrelay.serving.lanes import Handler, Lanes
from tokenrelay.web import page
from tokenrelay.wires import anthropic, native, openai, responses, seed, websocket

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

logger = logging.getLogger("tokenrelay")
Call = TypeVar("Call", bound=Callable[..., Any])


def _marked_coroutine_function(function: Call) -> Call:
    """Have ``function`` pass for a coroutine function where ASGI servers look (they tell
    ASGI 3 apps from ASGI 2 ones by ``iscoroutinefunction(app.__call__)``), as asgiref's
    ``markcoroutinefunction`` does: the standard marker from Python 3.12, asyncio's before."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        return mark(function)  # type: ignore[no-any-return]
    function._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
    return function


class TokenRelayApp(Starlette):
    """Starlette, with the routes that start streams taken first by :class:`Lanes`.

    Both pay, measured with ``python -m bench --quick --only slow`` (500 open streams): 18.9 KB
    per open stream as it is; 25.3 KB with every route through Starlette's middleware and
    router (the lanes off); 19.7 KB with ``__call__`` an ordinary coroutine (one more frame
    held under each stream). Added time to first token is the same within noise (0.4-0.6 ms).
    """

    def __init__(self, lanes: Lanes, **options: Any) -> None:
        super().__init__(**options)
        self.lanes = lanes

    @_marked_coroutine_function
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:  # type: ignore[override]
        # Not a coroutine itself: it hands back the one to run, so no frame of this method
        # stays in memory under each open stream.
        handler = self.lanes.handler_for(scope)
        if handler is None:
            return super().__call__(scope, receive, send)
        scope["app"] = self
        return self.lanes.serve(handler, scope, receive, send)


def create_app(settings: Settings | None = None, *, tracer: Tracer | None = None) -> Starlette:
    """The app; ``tracer`` traces it (by default the ``OTEL_*`` environment's, if any)."""
    settings = settings or load_settings()
    cors = Cors(settings.cors)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(settings, tracer) as services:
            app.state.services = services
            yield

    # The POST routes that start streams: answered by Lanes, on a shorter path. The router
    # keeps them too, for its 405 to other methods on the same paths.
    stream_starts: dict[str, Handler] = {
        "/v1/chat/completions": openai.chat_completions,
        "/v1/messages": anthropic.create_message,
        "/v1/responses": responses.create_response,
        "/v1/streams": native.start_stream,
        "/chat/stream": seed.chat_stream,
        "/api/v1/chat/stream": seed.chat_stream,
    }
    routes = [
        *(Route(path, handler, methods=["POST"]) for path, handler in stream_starts.items()),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", responses.cancel_response, methods=["POST"]),
        Route(
            "/v1/responses/{response_id}/input_items",
            responses.list_input_items,
            methods=["GET"],
        ),
        Route("/v1/streams/{stream_id}", native.attach_stream, methods=["GET"]),
        Route("/v1/streams/{stream_id}", native.cancel_stream, methods=["DELETE"]),
        Route("/v1/conversations", conversations.create_conversation, methods=["POST"]),
        Route("/v1/conversations", conversations.list_conversations, methods=["GET"]),
        Route(
            "/v1/conversations/{conversation_id}", conversations.get_conversation, methods=["GET"]
        ),
        Route(
            "/v1/conversations/{conversation_id}",
            conversations.update_conversation,
            methods=["PATCH"],
        ),
        Route(
            "/v1/conversations/{conversation_id}",
            conversations.delete_conversation,
            methods=["DELETE"],
        ),
        Route(
            "/v1/conversations/{conversation_id}/messages",
            conversations.list_messages,
            methods=["GET"],
        ),
        Route(
            "/v1/conversations/{conversation_id}/messages",
            conversations.post_message,
            methods=["POST"],
        ),
        WebSocketRoute("/ws/chat", websocket.chat_socket),
        Route("/v1/admin/keys", admin.create_key, methods=["POST"]),
        Route("/v1/admin/keys", admin.list_keys, methods=["GET"]),
        Route("/v1/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/v1/admin/usage", admin.usage, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/", page.index, methods=["GET"]),
        Route("/static/{name}", page.static, methods=["GET"]),
    ]
    return TokenRelayApp(
        Lanes({("POST", p): h for p, h in stream_starts.items()}, settings.auth, cors),
        routes=routes,
        lifespan=lifespan,
        middleware=[
            # Outermost: a preflight carries no credentials.
            *([cors.middleware()] if cors.enabled else []),
            Middleware(AuthMiddleware, settings=settings.auth),
            Middleware(RateLimitHeaders),
            # Inside RateLimitHeaders, whose per-request dict carries X-Request-Id back.
            Middleware(RequestIds),
        ],
        exception_handlers={
            errors.TokenRelayError: _relay_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )


async def _relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.TokenRelayError)
    return error_response(exc, errors.dialect_of(request.url.path))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method), in the path's dialect."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    error: errors.TokenRelayError
    if exc.status_code == 404:
        error = errors.NotFound(f"no route for {path}")
    elif exc.status_code == 405:
        error = errors.InvalidRequest(f"{request.method} is not allowed on {path}")
    else:
        error = errors.InvalidRequest(str(exc.detail))
    response = error_response(error, errors.dialect_of(path), status=exc.status_code)
    response.headers.update(exc.headers or {})
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return internal_error_response()
