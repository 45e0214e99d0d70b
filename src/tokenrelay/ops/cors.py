"""CORS for browser apps on other origins (``[cors] allowed_origins``; none by default).

Starlette's :class:`~starlette.middleware.cors.CORSMiddleware` answers preflights and adds the
headers to the routes in the middleware stack; the routes that start streams skip that stack
(:mod:`tokenrelay.serving.lanes`), so :meth:`Cors.publish` gives them the same headers on their
head through the per-request header dict, with no send wrapper kept for the stream's length.
Credentials are allowed: a page sends its key in ``Authorization``, never a cookie, so an
origin is trusted only if configured (``"*"`` echoes any origin).
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope

from tokenrelay.asgi import header
from tokenrelay.config import CorsSettings
from tokenrelay.limits import headers as response_head

# What a page's script may read from a response: ids to resume and cancel by, and the limits.
EXPOSED = (
    "X-Stream-Id",
    "X-Message-Id",
    "X-Request-Id",
    "Retry-After",
    *(
        f"x-ratelimit-{what}-{kind}"
        for what in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    ),
)
METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
MAX_AGE = 600


class Cors:
    def __init__(self, settings: CorsSettings) -> None:
        self.origins = [origin.rstrip("/") for origin in settings.allowed_origins]
        self._allowed = {origin.lower() for origin in self.origins}
        self._head = {
            "access-control-allow-credentials": "true",
            "access-control-expose-headers": ", ".join(EXPOSED),
            "vary": "Origin",
        }

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def allows(self, origin: str) -> bool:
        return "*" in self._allowed or origin.rstrip("/").lower() in self._allowed

    def middleware(self) -> Middleware:
        return Middleware(
            CORSMiddleware,
            allow_origins=self.origins,
            allow_methods=METHODS,
            # Reflected: Authorization, Content-Type, Last-Event-ID, X-Request-Id, the SDKs'.
            allow_headers=["*"],
            allow_credentials=True,
            expose_headers=EXPOSED,
            max_age=MAX_AGE,
        )

    def publish(self, scope: Scope) -> None:
        """Put the CORS headers for this request's ``Origin`` on its response head."""
        origin = header(scope, b"origin")
        if origin is not None and self.allows(origin):
            response_head.publish({"access-control-allow-origin": origin, **self._head})
