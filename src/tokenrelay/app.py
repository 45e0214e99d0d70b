"""The ASGI application: services made in the lifespan, routes, and one error boundary."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from tokenrelay import errors, page
from tokenrelay.auth import Authenticator, AuthMiddleware
from tokenrelay.client import Client
from tokenrelay.config import Settings, load_settings
from tokenrelay.conversations import Conversations
from tokenrelay.limits import Gate, RateLimitHeaders, build_limiter
from tokenrelay.limits.ledger import Ledger
from tokenrelay.ops.cors import Cors
from tokenrelay.ops.requests import RequestIds
from tokenrelay.ops.wiring import CONTENT_TYPE, Operations
from tokenrelay.providers import ProviderContext, build_provider
from tokenrelay.providers.base import WORKER_STATES
from tokenrelay.relay import Relay
from tokenrelay.store import Accounts, open_store
from tokenrelay.wires import (
    admin,
    anthropic,
    conversations,
    native,
    openai,
    openapi,
    seed,
    websocket,
)
from tokenrelay.wires.http import JSONResponse, error_response, internal_error_response
from tokenrelay.wires.lanes import Handler, Lanes

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
    """Starlette, with the routes that start streams taken first by :class:`Lanes`."""

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
        store = await open_store(settings)
        http = Client(max_head=settings.limits.upstream_max_head_bytes)
        try:
            context = ProviderContext(settings=settings, http=http)
            providers = {
                name: build_provider(name, config, context)
                for name, config in settings.models.items()
            }
            # Warm up in the background: a large model must not hold back /healthz.
            preparing = [asyncio.create_task(p.prepare()) for p in providers.values()]
            app.state.relay = Relay(settings, providers)
            app.state.store = store
            app.state.conversations = Conversations(store, app.state.relay, settings)
            app.state.conversations.start()
            app.state.accounts = accounts = Accounts(store)
            app.state.authenticator = Authenticator(settings.auth, accounts)
            app.state.gate = gate = Gate(
                settings.rate_limits, build_limiter(settings), Ledger(accounts)
            )
            app.state.relay.admission = gate
            app.state.relay.finish_hooks.append(gate.finished)
            gate.start()
            app.state.ops = ops = Operations(settings, app.state.relay, store, gate, tracer)
            await ops.start()
            try:
                yield
            finally:
                for task in preparing:
                    task.cancel()
                await app.state.relay.shutdown()
                # After the relay: the spans of the streams it stopped are exported too.
                await ops.aclose()
                await app.state.conversations.aclose()
                await gate.aclose()
                for provider in providers.values():
                    await provider.aclose()
        finally:
            await http.aclose()
            await store.close()

    # The POST routes that start streams: answered by Lanes, on a shorter path. The router
    # keeps them too, for its 405 to other methods on the same paths.
    stream_starts: dict[str, Handler] = {
        "/v1/chat/completions": openai.chat_completions,
        "/v1/messages": anthropic.create_message,
        "/v1/streams": native.start_stream,
        "/chat/stream": seed.chat_stream,
        "/api/v1/chat/stream": seed.chat_stream,
    }
    routes = [
        *(Route(path, handler, methods=["POST"]) for path, handler in stream_starts.items()),
        Route("/v1/models", openai.list_models, methods=["GET"]),
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
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
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
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(errors.NotFound(f"no route for {request.url.path}"))
    if exc.status_code == 405:
        error = errors.InvalidRequest(f"{request.method} is not allowed on {request.url.path}")
        response = JSONResponse(error.to_payload(), status_code=405)
        response.headers.update(exc.headers or {})
        return response
    return JSONResponse(
        {"error": {"message": exc.detail, "type": "invalid_request_error", "code": None}},
        status_code=exc.status_code,
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return internal_error_response()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    relay: Relay = request.app.state.relay
    ops: Operations = request.app.state.ops
    if relay.closing:
        # Out of rotation at once on SIGTERM, while the streams in flight drain.
        return JSONResponse({"status": "draining"}, status_code=503)
    found = await ops.readiness.check()
    # A local model's worker that is down is shown and named, not a reason to take the
    # instance out of rotation: every other model still answers, and the supervisor brings
    # it back.
    workers = ops.workers()
    down = [name for name, up in found.items() if not up]
    down += [f"worker:{name}" for name, health in workers.items() if health.state != "ready"]
    counts = Counter(health.state for health in workers.values())
    dependencies = {name: "ok" if up else "unreachable" for name, up in found.items()}
    if not all(found.values()):
        return JSONResponse(
            {"status": "unavailable", **dependencies, "down": down}, status_code=503
        )
    return JSONResponse(
        {
            "status": "ready",
            # How many models, never their names: /readyz answers without credentials.
            "models": len(relay.providers),
            **dependencies,
            "workers": {state: counts[state] for state in WORKER_STATES},
            "down": down,
        }
    )


async def metrics(request: Request) -> Response:
    ops: Operations = request.app.state.ops
    if ops.metrics is None:
        return error_response(errors.NotFound("metrics are turned off (observability.metrics)"))
    return Response(await ops.render(), media_type=CONTENT_TYPE)
