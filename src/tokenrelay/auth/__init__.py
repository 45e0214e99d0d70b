"""Who is calling: API keys, JWT bearer tokens, and the middleware that checks them."""

from __future__ import annotations

from tokenrelay.auth.authenticator import Authenticator
from tokenrelay.auth.identity import Principal
from tokenrelay.auth.middleware import AuthMiddleware

__all__ = ["AuthMiddleware", "Authenticator", "Principal"]
