"""``x-ratelimit-*`` headers (OpenAI's names) on the responses admission answered.

Admission runs below the wires, with no response in hand; it leaves its headers in a
per-request dict that this middleware (or :mod:`tokenrelay.serving.lanes`) opened, and they are
added to the response head whatever the route sends (a stream, a JSON body or an error).
"""

from __future__ import annotations

import math
from contextvars import ContextVar, Token

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenrelay.config import Quota
from tokenrelay.limits.base import Decision

_pending: ContextVar[dict[str, str] | None] = ContextVar("tokenrelay_ratelimit", default=None)


def publish(headers: dict[str, str]) -> None:
    """Put ``headers`` on the current HTTP response (no-op outside one, e.g. a WebSocket)."""
    pending = _pending.get()
    if pending is not None:
        pending.update(headers)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_headers(quota: Quota, decision: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, limit, level in (
        ("requests", quota.requests_per_minute, decision.requests),
        ("tokens", quota.tokens_per_minute, decision.tokens),
    ):
        if limit is None or level is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
        headers[f"x-ratelimit-reset-{kind}"] = duration((limit - level) * 60 / limit)
    return headers


def collect() -> tuple[dict[str, str], Token[dict[str, str] | None]]:
    """Open this request's dict for :func:`publish`; reset :data:`_pending` with the token."""
    pending: dict[str, str] = {}
    return pending, _pending.set(pending)


def take() -> list[tuple[bytes, bytes]]:
    """The headers published so far in this request, as raw header pairs, handed over once.

    For responses that write their own head (the streaming ones): they add these to it, and
    need no wrapper around ``send`` for the rest of a long stream.
    """
    pending = _pending.get()
    return _hand_over(pending) if pending else []


def sending(send: Send, pending: dict[str, str]) -> Send:
    """``send``, with the headers published so far added to the response head."""

    async def with_headers(message: Message) -> None:
        if message["type"] == "http.response.start" and pending:
            extra = _hand_over(pending)
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return with_headers


def _hand_over(pending: dict[str, str]) -> list[tuple[bytes, bytes]]:
    # Emptied once on a head: a stream's response lives as long as the stream.
    taken = [(k.encode(), v.encode()) for k, v in pending.items()]
    pending.clear()
    return taken


def finish(token: Token[dict[str, str] | None]) -> None:
    _pending.reset(token)


class RateLimitHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending, token = collect()
        try:
            await self.app(scope, receive, sending(send, pending))
        finally:
            finish(token)
