"""Keys and tokens for the auth tests, made the way an operator's tools make them."""

from __future__ import annotations

import time
from typing import Any

import jwt

from tests.gateway import Gateway
from tokenrelay.auth.keys import issue_key
from tokenrelay.store import Accounts

ISSUER = "https://issuer.test"
AUDIENCE = "tokenrelay-tests"
SECRET = "a-shared-secret-that-is-long-enough-for-hs256!"


def secured(**auth: Any) -> dict[str, Any]:
    """``serve()`` overrides with auth on (the suite turns it off by default)."""
    return {"auth": {"enabled": True, **auth}}


def with_jwt(**auth: Any) -> dict[str, Any]:
    return secured(jwt_secret=SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, **auth)


async def key_for(
    gateway: Gateway, owner: str, scopes: tuple[str, ...] = ("chat",), **options: Any
) -> str:
    accounts: Accounts = gateway.services.accounts
    _, secret = await issue_key(accounts, owner, scopes, **options)
    return secret


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(sub: str = "jwt-user", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300} | extra


def hs256(**extra: Any) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")
