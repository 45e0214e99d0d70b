"""Turn a presented credential into a :class:`~tokenrelay.auth.identity.Principal`, or refuse.

Every refusal is the same :class:`~tokenrelay.errors.Unauthorized`, whatever was wrong (no
such key, revoked, expired, bad signature, wrong audience): telling them apart would tell an
attacker which guess came closest. A token that cannot be a key or a JWT is refused without
touching the database. The database failing is not the caller's fault and is never described
to them: it is logged and answered 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from tokenrelay import errors
from tokenrelay.auth import keys
from tokenrelay.auth.identity import Principal
from tokenrelay.auth.tokens import JWT_USER_PREFIX, MAX_SUBJECT, JWTVerifier
from tokenrelay.config import AuthSettings, Quota
from tokenrelay.store.accounts import Accounts, KeyRecord
from tokenrelay.store.models import utcnow

logger = logging.getLogger("tokenrelay.auth")

MAX_TOKEN_CHARS = 8_192
# Verified JWTs remembered at once; past this the oldest is forgotten (and verified again).
MAX_CACHED_TOKENS = 4_096
# A cached key used in the last half of its key_cache_ttl is read again in the background.
REFRESH_AHEAD = 0.5


@dataclass(slots=True)
class _Cached:
    record: KeyRecord
    principal: Principal
    until: float


@dataclass(slots=True)
class _Verified:
    principal: Principal
    until: float
    """Wall-clock seconds: never past the token's own ``exp``."""


def refused() -> errors.Unauthorized:
    return errors.Unauthorized("a valid API key or bearer token is required")


def unavailable() -> errors.LimiterUnavailable:
    return errors.LimiterUnavailable(
        "the gateway cannot check credentials right now; try again shortly", retry_after=1
    )


class Authenticator:
    def __init__(self, settings: AuthSettings, accounts: Accounts) -> None:
        self.settings = settings
        self.accounts = accounts
        self.jwt = JWTVerifier(settings) if settings.jwt_configured else None
        self._keys: dict[str, _Cached] = {}
        # A client sends the same JWT on every request until it expires: its signature and
        # claims are checked once per key_cache_ttl, not on every request (about a tenth of a
        # millisecond each, on the way to the first token).
        self._tokens: dict[str, _Verified] = {}
        self._known_users: set[str] = set()
        self._refreshing: set[str] = set()
        self._refreshes: set[asyncio.Task[None]] = set()

    async def authenticate(self, token: str | None) -> Principal:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise refused()
        if token.startswith(keys.PREFIX):
            return await self._by_key(token)
        if self.jwt is not None and token.count(".") == 2:
            return await self._by_jwt(token)
        raise refused()

    async def aclose(self) -> None:
        """Let the keys being read again in the background finish before the store closes."""
        if self._refreshes:
            await asyncio.wait(list(self._refreshes), timeout=5)

    def forget_keys(self) -> None:
        """Drop every cached key (after a revocation, so it takes effect at once here)."""
        self._keys.clear()

    async def _by_key(self, token: str) -> Principal:
        if not keys.well_formed(token):
            raise refused()
        digest = keys.hash_key(token)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is None or cached.until <= now:
            try:
                found = await self.accounts.key_by_hash(digest)
            except Exception:
                logger.exception("looking up an API key failed")
                raise unavailable() from None
            if found is None or not keys.matches(token, found.key_hash):
                raise refused()
            cached = self._remember(digest, found, now)
        elif cached.until - now < self.settings.key_cache_ttl * REFRESH_AHEAD:
            self._refresh_soon(digest, token)
        # Checked on every use, cached or not: a key expires on time.
        if not cached.record.usable(utcnow()):
            raise refused()
        return cached.principal

    def _remember(self, digest: str, record: KeyRecord, read_at: float) -> _Cached:
        """Trust ``record``, as read from the database at ``read_at``, for key_cache_ttl."""
        cached = _Cached(record, _principal(record), read_at + self.settings.key_cache_ttl)
        if self.settings.key_cache_ttl > 0:
            self._keys[digest] = cached
        return cached

    def _refresh_soon(self, digest: str, token: str) -> None:
        """Read a key in use again before its cached entry runs out, off the request's path.

        A key in steady use then never waits on the database, and what is trusted was still
        read at most key_cache_ttl ago: a revocation elsewhere takes effect as quickly as
        before.
        """
        if digest in self._refreshing:
            return
        self._refreshing.add(digest)
        task = asyncio.get_running_loop().create_task(self._refresh(digest, token))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _refresh(self, digest: str, token: str) -> None:
        try:
            read_at = time.monotonic()
            found = await self.accounts.key_by_hash(digest, background=True)
        except Exception:
            # The entry runs out as it would have; the next use then says the database failed.
            logger.exception("looking up an API key again failed")
            return
        finally:
            self._refreshing.discard(digest)
        if found is None or not keys.matches(token, found.key_hash):
            self._keys.pop(digest, None)
        elif digest in self._keys:
            # Not brought back if forget_keys() ran meanwhile: a revocation here wins.
            self._remember(digest, found, read_at)

    async def _by_jwt(self, token: str) -> Principal:
        assert self.jwt is not None
        now = time.time()
        verified = self._tokens.get(token)
        if verified is not None and now < verified.until:
            return verified.principal
        claims = self.jwt.verify(token)
        user = JWT_USER_PREFIX + claims.subject
        if user not in self._known_users:
            try:
                await self.accounts.ensure_user(user)
            except Exception:
                logger.exception("recording a new user failed")
                raise unavailable() from None
            self._known_users.add(user)
        principal = Principal(user=user, scopes=claims.scopes)
        if self.settings.key_cache_ttl > 0:
            if len(self._tokens) >= MAX_CACHED_TOKENS:
                self._tokens.pop(next(iter(self._tokens)))
            until = min(claims.expires, now + self.settings.key_cache_ttl)
            self._tokens[token] = _Verified(principal, until)
        return principal


def _principal(record: KeyRecord) -> Principal:
    return Principal(
        user=record.owner,
        scopes=frozenset(record.scopes),
        key_id=record.id,
        limits=Quota.model_validate(record.limits),
    )


def valid_user_name(name: str) -> bool:
    """A name a key may be issued to: JWT users' own namespace is not one."""
    return (
        0 < len(name) <= MAX_SUBJECT
        and name.isprintable()
        and name.strip() == name
        and not name.startswith(JWT_USER_PREFIX)
    )
