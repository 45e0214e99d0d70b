"""Admission: may this user start this stream now? And, when it ends, what did it cost?

The relay asks :meth:`Gate.admit` before a client's stream starts (``Relay.open``). A yes is
a :class:`Ticket`: the request counted, its estimated tokens charged, a concurrency lease
held. The ticket is bound to the stream it let in; while the stream lives its lease is
renewed, and when it ends (a relay finish hook: done, error, cancel, disconnect, timeout
alike) the lease is released and the charge corrected to the usage the provider reported
(or, when it reported none, to an estimate of the text that was streamed). A no is a 429
with the reason's code and ``Retry-After``.

The estimate at admission is the prompt (estimated as :mod:`tokenrelay.tokens` does) plus
``max_tokens`` or ``rate_limits.completion_estimate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from tokenrelay import errors
from tokenrelay.auth import identity
from tokenrelay.chat import ChatRequest
from tokenrelay.config import Quota, RateLimitSettings
from tokenrelay.ids import unique
from tokenrelay.limits.base import Lease, Limiter, LimiterDown
from tokenrelay.limits.headers import duration, publish, rate_headers
from tokenrelay.limits.ledger import Ledger
from tokenrelay.relay.stream import Stream
from tokenrelay.store.accounts import StreamUsage
from tokenrelay.store.models import utcnow
from tokenrelay.tokens import MESSAGE_OVERHEAD, estimate_tokens

logger = logging.getLogger("tokenrelay.limits")

ANONYMOUS = "anonymous"
# How often a "Redis is down, admitting anyway" warning may repeat, in seconds.
WARN_EVERY = 10.0


def subject_of(owner: str | None) -> str:
    # Prefixed, so no user name can collide with the one used when auth is off.
    return ANONYMOUS if owner is None else "user:" + owner


def prompt_tokens(request: ChatRequest) -> int:
    return sum(estimate_tokens(m.text) + MESSAGE_OVERHEAD for m in request.messages)


class Ticket:
    """One admitted request, from admission until its stream's end settles it."""

    __slots__ = ("cost", "created", "day", "gate", "key_id", "lease", "owner", "prompt", "quota")

    def __init__(
        self,
        gate: Gate,
        *,
        owner: str | None,
        key_id: str | None,
        quota: Quota,
        prompt: int,
        cost: int,
    ) -> None:
        self.gate = gate
        self.owner = owner
        self.key_id = key_id
        self.quota = quota
        self.prompt = prompt
        self.cost = cost
        self.created = time.monotonic()
        self.lease: Lease | None = None
        self.day = 0

    def bind(self, stream: Stream) -> None:
        self.gate._bind(self, stream)

    def void(self) -> None:
        self.gate._void(self)


class Gate:
    def __init__(
        self, settings: RateLimitSettings, limiter: Limiter, ledger: Ledger | None = None
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.ledger = ledger
        self.timeout = settings.redis_timeout * 2
        self._waiting: set[Ticket] = set()
        self._live: dict[str, Ticket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._warned = -WARN_EVERY

    def quota(self, owner: str | None) -> Quota:
        quota = self.settings.quota_for(owner)
        principal = identity.current.get()
        if principal is not None and principal.user == owner:
            quota = principal.limits.over(quota)
        return quota

    async def admit(self, request: ChatRequest, owner: str | None) -> Ticket:
        principal = identity.current.get()
        quota = self.quota(owner)
        prompt = prompt_tokens(request)
        ticket = Ticket(
            self,
            owner=owner,
            key_id=principal.key_id if principal is not None else None,
            quota=quota,
            prompt=prompt,
            cost=prompt + (request.options.token_limit or self.settings.completion_estimate),
        )
        if not quota.unlimited:
            lease = Lease(subject_of(owner), unique("lease"))
            limiter = self.limiter
            try:
                if limiter.in_process:
                    # A timer armed and disarmed for a call that never waits is a tenth of
                    # admission's cost, on the way to every first token.
                    decision = await limiter.admit(lease.subject, quota, ticket.cost, lease.id)
                else:
                    async with asyncio.timeout(self.timeout):
                        decision = await limiter.admit(lease.subject, quota, ticket.cost, lease.id)
            except (LimiterDown, TimeoutError) as exc:
                self._unavailable(exc)
            else:
                publish(rate_headers(quota, decision))
                if decision.code is not None:
                    raise _refusal(decision.code, decision.retry_after, quota)
                ticket.lease, ticket.day = lease, decision.day
        self._waiting.add(ticket)
        return ticket

    async def count_request(self, owner: str | None) -> None:
        """Take one request from ``owner``'s rate for a request that starts no stream."""
        rate = self.quota(owner).requests_per_minute
        if rate is None:
            return
        quota = Quota(requests_per_minute=rate)
        lease = Lease(subject_of(owner), unique("lease"))
        try:
            async with asyncio.timeout(self.timeout):
                decision = await self.limiter.admit(lease.subject, quota, 0, lease.id)
                if decision.code is None:
                    await self.limiter.settle(lease, quota, 0, decision.day)
        except (LimiterDown, TimeoutError) as exc:
            self._unavailable(exc)
            return
        publish(rate_headers(quota, decision))
        if decision.code is not None:
            raise _refusal(decision.code, decision.retry_after, quota)

    def _unavailable(self, exc: BaseException) -> None:
        """Apply the Redis-down policy: raise (fail closed) or let the request in unlimited."""
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            logger.warning(
                "the rate limiter is unreachable (%s); %s",
                exc or type(exc).__name__,
                "admitting without limits"
                if self.settings.redis_failure == "fail_open"
                else "refusing requests with 503",
            )
        if self.settings.redis_failure == "fail_closed":
            raise errors.LimiterUnavailable(
                "the rate limiter is unavailable; try again shortly", retry_after=1
            )

    def _bind(self, ticket: Ticket, stream: Stream) -> None:
        self._waiting.discard(ticket)
        self._live[stream.id] = ticket

    def _void(self, ticket: Ticket) -> None:
        self._waiting.discard(ticket)
        self._spawn(self._settle(ticket, 0))

    async def finished(self, stream: Stream) -> None:
        """The relay's finish hook: release the stream's slot and account what it used."""
        ticket = self._live.pop(stream.id, None)
        if ticket is None:
            return
        prompt, completion, estimated = _usage(ticket, stream)
        await self._settle(ticket, prompt + completion)
        if self.ledger is not None:
            self.ledger.add(
                StreamUsage(
                    owner=ticket.owner,
                    key_id=ticket.key_id,
                    model=stream.model,
                    stream_id=stream.id,
                    status=stream.status,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    estimated=estimated,
                    created_at=utcnow(),
                )
            )

    async def _settle(self, ticket: Ticket, used: int) -> None:
        if ticket.lease is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self.limiter.settle(
                    ticket.lease, ticket.quota, used - ticket.cost, ticket.day
                )
        except (LimiterDown, TimeoutError) as exc:
            # The lease expires by itself; only the token correction is lost.
            logger.warning("releasing lease %s failed: %s", ticket.lease.id, exc or "timeout")

    async def live(self, owner: str | None) -> int:
        """Concurrency slots ``owner`` holds now, on every instance sharing the limiter."""
        return await self.limiter.live(subject_of(owner))

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewal")
        if self.ledger is not None:
            self.ledger.start()

    async def _renew_forever(self) -> None:
        ttl = self.limiter.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            now = time.monotonic()
            # Admitted but never started (its caller failed in between): give it back.
            for ticket in [t for t in self._waiting if now - t.created > ttl]:
                self._void(ticket)
            leases = [
                t.lease for t in (*self._live.values(), *self._waiting) if t.lease is not None
            ]
            try:
                async with asyncio.timeout(self.timeout):
                    await self.limiter.renew(leases)
            except (LimiterDown, TimeoutError) as exc:
                logger.warning("renewing %d leases failed: %s", len(leases), exc or "timeout")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout + 1)
        if self.ledger is not None:
            await self.ledger.aclose()
        await self.limiter.aclose()


def _usage(ticket: Ticket, stream: Stream) -> tuple[int, int, bool]:
    """Prompt and completion tokens, and whether they are estimates."""
    log = stream.log
    reported = log.usage
    if reported is not None:
        return reported.prompt_tokens, reported.completion_tokens, False
    text = log.text()
    if not log.accepted and not text:
        # Refused before the upstream took it: nothing was spent.
        return 0, 0, False
    return ticket.prompt, estimate_tokens(text), True


def _refusal(code: str, retry_after: float, quota: Quota) -> errors.TokenRelayError:
    wait = duration(retry_after)
    if code == "budget_exceeded":
        return errors.BudgetExceeded(
            f"the daily budget of {quota.tokens_per_day} tokens is spent; "
            f"it renews at midnight UTC (in {wait})",
            retry_after=retry_after,
        )
    if code == "concurrency_limited":
        return errors.ConcurrencyLimited(
            f"{quota.concurrent_streams} streams are already running for this user; "
            "retry when one ends",
            retry_after=retry_after,
        )
    limits = [
        f"{limit} {unit} a minute"
        for limit, unit in (
            (quota.requests_per_minute, "requests"),
            (quota.tokens_per_minute, "tokens"),
        )
        if limit is not None
    ]
    return errors.RateLimited(
        f"rate limit reached ({' and '.join(limits)}); retry in {wait}", retry_after=retry_after
    )
