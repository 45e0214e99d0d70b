"""The ASGI middleware in front of every route: who is calling, and may they.

HTTP: ``Authorization: Bearer <key or JWT>`` (and ``x-api-key`` on Anthropic's ``/v1/messages``,
as its SDKs send it). ``/healthz``, ``/readyz`` and the page's files are open; ``/v1/admin/…``
and ``/metrics`` need the ``admin`` scope, everything else ``chat``.

WebSocket: the ``Origin`` is checked first (RFC 6455 §10.2: browsers send one, and a page on
another site must not drive a socket with the user's reach); then a bearer header is checked
at the handshake (a refusal is a 401 there), or, as browsers cannot set headers on a
WebSocket, the socket is accepted and its first message must be ``{"type": "auth", "token":
…}`` within ``auth.ws_auth_timeout`` (a refusal is a close with 1008).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from contextvars import Token
from typing import Protocol
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenrelay import errors
from tokenrelay.asgi import header
from tokenrelay.auth.authenticator import Authenticator, refused
from tokenrelay.auth.identity import Principal, current
from tokenrelay.config import AuthSettings

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/"})
OPEN_PREFIXES = ("/static/",)
ADMIN_PATHS = frozenset({"/metrics", "/v1/admin"})
ADMIN_PREFIXES = ("/v1/admin/",)
MAX_AUTH_MESSAGE = 16_384


def needs_scope(path: str) -> str | None:
    """The scope a path needs, or None for the open ones."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES):
        return "admin"
    return "chat"


def credential(scope: Scope) -> str | None:
    authorization = header(scope, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    if scope["type"] == "http" and errors.dialect_of(scope["path"]) == "anthropic":
        return header(scope, b"x-api-key")
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, settings: AuthSettings) -> None:
        self.app = app
        self.settings = settings
        self.origins = {origin.rstrip("/").lower() for origin in settings.allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.settings.enabled or needs_scope(scope["path"]) is None:
            await self.app(scope, receive, send)
            return
        try:
            principal = await check(scope, credential(scope))
        except errors.TokenRelayError as exc:
            await refuse_http(scope, send, exc)
            return
        await self._as(principal, scope, receive, send)

    async def _as(self, principal: Principal, scope: Scope, receive: Receive, send: Send) -> None:
        token = enter(principal, scope)
        try:
            await self.app(scope, receive, send)
        finally:
            current.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._origin_allowed(scope):
            await _refuse_handshake(scope, receive, send, errors.Forbidden("origin not allowed"))
            return
        if not self.settings.enabled:
            await self.app(scope, receive, send)
            return
        token = credential(scope)
        if token is not None:
            try:
                principal = await check(scope, token)
            except errors.TokenRelayError as exc:
                await _refuse_handshake(scope, receive, send, exc)
                return
            await self._as(principal, scope, receive, send)
            return
        await self._first_message(scope, receive, send)

    async def _first_message(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        try:
            async with asyncio.timeout(self.settings.ws_auth_timeout):
                message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            principal = await check(scope, _auth_token(message))
        except TimeoutError:
            await _close(send, refused())
            return
        except errors.TokenRelayError as exc:
            await _close(send, exc)
            return
        # The app accepts the socket as usual; it is already open, so that accept is dropped.
        replay: list[Message] = [{"type": "websocket.connect"}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        async def accepted(message: Message) -> None:
            if message["type"] != "websocket.accept":
                await send(message)

        await self._as(principal, scope, replayed, accepted)

    def _origin_allowed(self, scope: Scope) -> bool:
        origin = header(scope, b"origin")
        if origin is None:
            # Not a browser: the Origin check protects browsers' users, and others send none.
            return True
        origin = origin.rstrip("/").lower()
        if "*" in self.origins or origin in self.origins:
            return True
        host = (header(scope, b"host") or "").lower()
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host


class HasAuthenticator(Protocol):
    """What this layer needs of the app's services (``tokenrelay.services`` sits above it)."""

    authenticator: Authenticator


async def check(scope: Scope, token: str | None) -> Principal:
    """Who ``token`` stands for, if they may use this path; raises the refusal if not."""
    services: HasAuthenticator = scope["app"].state.services
    authenticator = services.authenticator
    principal = await authenticator.authenticate(token)
    scope_needed = needs_scope(scope["path"]) or "chat"
    if not principal.allows(scope_needed):
        raise errors.Forbidden(f"this key lacks the {scope_needed!r} scope")
    return principal


def enter(principal: Principal, scope: Scope) -> Token[Principal | None]:
    """Make ``principal`` the caller for the rest of this request; reset :data:`current` with
    the token returned. The scope is this request's own (the server makes one per request), so
    it is written in place: a copy would be held for as long as the response streams."""
    scope["user"] = principal.user
    scope["scopes"] = sorted(principal.scopes)
    return current.set(principal)


def _auth_token(message: Message) -> str | None:
    raw = message.get("text") or message.get("bytes") or b""
    if len(raw) > MAX_AUTH_MESSAGE:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("type") != "auth":
        return None
    token = data.get("token")
    return token if isinstance(token, str) else None


def _error_body(scope: Scope, exc: errors.TokenRelayError) -> bytes:
    return errors.body(exc, errors.dialect_of(scope["path"]))


def _error_headers(exc: errors.TokenRelayError, body: bytes) -> Iterable[tuple[bytes, bytes]]:
    yield b"content-type", b"application/json"
    yield b"content-length", str(len(body)).encode()
    for name, value in errors.header_pairs(exc):
        yield name.lower().encode(), value.encode()


async def refuse_http(scope: Scope, send: Send, exc: errors.TokenRelayError) -> None:
    body = _error_body(scope, exc)
    headers = list(_error_headers(exc, body))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse_handshake(
    scope: Scope, receive: Receive, send: Send, exc: errors.TokenRelayError
) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        body = _error_body(scope, exc)
        headers = list(_error_headers(exc, body))
        await send(
            {"type": "websocket.http.response.start", "status": exc.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # A close before the accept is refused with a bare 403 by the server.
        await send({"type": "websocket.close", "code": exc.ws_close_code})


async def _close(send: Send, exc: errors.TokenRelayError) -> None:
    # 1008 (policy violation) for a refusal; 1013 (try again later) when the check failed.
    code = 1008 if isinstance(exc, errors.Unauthorized | errors.Forbidden) else 1013
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": code, "reason": exc.code})
