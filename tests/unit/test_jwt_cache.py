"""A JWT is verified once per key_cache_ttl, and never trusted past its own ``exp``."""

from __future__ import annotations

import time
from typing import Any, cast

import jwt
import pytest

from tokenrelay import errors
from tokenrelay.auth import authenticator as module
from tokenrelay.auth.authenticator import Authenticator
from tokenrelay.config import AuthSettings
from tokenrelay.store.accounts import Accounts

SECRET = "a-secret-for-hs256-at-least-32-bytes"


class NoDatabase:
    async def ensure_user(self, user_id: str) -> None:
        pass


def authenticator(**auth: Any) -> tuple[Authenticator, list[str]]:
    settings = AuthSettings(jwt_secret=SECRET, jwt_issuer="iss", jwt_audience="aud", **auth)
    checker = Authenticator(settings, cast(Accounts, NoDatabase()))
    verified: list[str] = []
    assert checker.jwt is not None
    verify = checker.jwt.verify

    def counting(token: str) -> Any:
        verified.append(token)
        return verify(token)

    checker.jwt.verify = counting  # type: ignore[method-assign]
    return checker, verified


def token(expires_in: float) -> str:
    claims = {"sub": "ada", "iss": "iss", "aud": "aud", "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_the_same_token_is_verified_once_while_cached() -> None:
    checker, verified = authenticator()
    good = token(3600)
    first = await checker.authenticate(good)
    assert await checker.authenticate(good) is first
    assert verified == [good]


async def test_a_cached_token_is_verified_again_once_its_exp_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checker, verified = authenticator(key_cache_ttl=3600)
    short = token(60)
    await checker.authenticate(short)
    later = time.time() + 120
    monkeypatch.setattr(module.time, "time", lambda: later)
    # Verified again: PyJWT's leeway (30 s) may still take it, the cache never does.
    try:
        await checker.authenticate(short)
    except errors.Unauthorized:
        pass
    assert verified == [short, short]


async def test_no_cache_with_a_zero_ttl() -> None:
    checker, verified = authenticator(key_cache_ttl=0)
    good = token(3600)
    await checker.authenticate(good)
    await checker.authenticate(good)
    assert verified == [good, good]


async def test_a_bad_token_is_refused_every_time() -> None:
    checker, _ = authenticator()
    bad = token(3600)[:-2] + "xx"
    for _ in range(2):
        with pytest.raises(errors.Unauthorized):
            await checker.authenticate(bad)
