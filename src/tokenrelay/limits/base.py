"""The limiter contract, and the arithmetic both backends implement.

Per subject (one user) a limiter keeps:

* a request bucket: ``requests_per_minute`` tokens, refilled continuously at that rate per
  minute; each admission takes one;
* a token bucket: ``tokens_per_minute``, refilled the same way; each admission takes its
  estimated cost, and the end of the stream corrects that to the real usage, so the bucket
  may go below zero (a debt later requests wait out);
* a day's tally of tokens against ``tokens_per_day`` (UTC days), corrected the same way;
* leases: one per admitted stream, holding a concurrency slot until it is released or its
  TTL passes without a renewal.

:func:`decide` is the decision, step by step; the in-process backend runs it under the event
loop (no ``await`` inside), the Redis backend runs the same steps in one Lua script, so no
two instances ever both take the last slot.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

from tokenrelay.config import Quota

DAY = 86_400.0
# A stream can end at any moment, so a client refused a slot is told to retry soon.
CONCURRENCY_RETRY = 1.0


class LimiterDown(Exception):
    """The limiter's backend cannot be reached (or did not answer in time)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One admission's answer; ``code`` is None when admitted.

    ``requests`` and ``tokens`` are the buckets' levels after it (None when unlimited).
    """

    code: str | None
    retry_after: float
    requests: float | None
    tokens: float | None
    live: int
    day: int


@dataclass(frozen=True, slots=True)
class Lease:
    subject: str
    id: str


@dataclass(slots=True)
class State:
    """One subject's counters, as the in-process backend holds them."""

    requests: float | None = None
    requests_at: float = 0.0
    tokens: float | None = None
    tokens_at: float = 0.0
    day: int = -1
    used: int = 0
    leases: dict[str, float] = field(default_factory=dict)
    touched: float = 0.0


def refill(level: float | None, at: float, capacity: int, now: float) -> float:
    """A bucket's level at ``now``; a bucket never seen is full."""
    if level is None:
        return float(capacity)
    return min(float(capacity), level + max(0.0, now - at) * capacity / 60.0)


def decide(state: State, quota: Quota, cost: int, lease: str, now: float, ttl: float) -> Decision:
    rpm, slots = quota.requests_per_minute, quota.concurrent_streams
    tpm, tpd = quota.tokens_per_minute, quota.tokens_per_day
    day = math.floor(now / DAY)
    requests = refill(state.requests, state.requests_at, rpm, now) if rpm else None
    tokens = refill(state.tokens, state.tokens_at, tpm, now) if tpm else None
    used = state.used if state.day == day else 0
    live = len(state.leases)
    if slots and live >= slots:
        # Expired leases only matter at the limit: dropping them on every admission would
        # cost each new stream a pass over all of the subject's live ones.
        live = drop_expired(state, now)

    code, retry = None, 0.0
    if tpd and used + min(cost, tpd) > tpd:
        code, retry = "budget_exceeded", (day + 1) * DAY - now
    elif slots and live >= slots:
        code, retry = "concurrency_limited", CONCURRENCY_RETRY
    elif rpm and requests is not None and requests < 1:
        code, retry = "rate_limited", (1 - requests) * 60.0 / rpm
    elif tpm and tokens is not None and tokens < min(cost, tpm):
        code, retry = "rate_limited", (min(cost, tpm) - tokens) * 60.0 / tpm
    if code is not None:
        return Decision(code, retry, requests, tokens, live, day)

    if requests is not None:
        requests -= 1
        state.requests, state.requests_at = requests, now
    if tokens is not None:
        tokens -= cost
        state.tokens, state.tokens_at = tokens, now
    state.day, state.used = day, used + cost
    state.leases[lease] = now + ttl
    state.touched = now
    return Decision(None, 0.0, requests, tokens, live + 1, day)


def drop_expired(state: State, now: float) -> int:
    """Forget the leases whose holder stopped renewing them; return how many are left."""
    for held, expiry in list(state.leases.items()):
        if expiry <= now:
            del state.leases[held]
    return len(state.leases)


def correct(state: State, quota: Quota, correction: int, day: int, now: float) -> None:
    """Charge (or refund) the difference between a stream's real and estimated cost."""
    if correction == 0:
        return
    if quota.tokens_per_minute and state.tokens is not None:
        level = refill(state.tokens, state.tokens_at, quota.tokens_per_minute, now)
        state.tokens = min(float(quota.tokens_per_minute), level - correction)
        state.tokens_at = now
    if state.day == day:
        state.used = max(0, state.used + correction)
    state.touched = now


class Limiter(abc.ABC):
    """Counters behind admission. Backends raise :class:`LimiterDown` when unreachable."""

    in_process = False
    """True for a limiter that never waits on anything: admission needs no timeout for it."""

    def __init__(self, lease_ttl: float) -> None:
        self.lease_ttl = lease_ttl

    @abc.abstractmethod
    async def admit(self, subject: str, quota: Quota, cost: int, lease: str) -> Decision:
        """Admit one request costing ``cost`` tokens under ``quota``, or say why not.

        Admitted, it is counted, charged, and holds the lease ``lease`` (a slot).
        """

    @abc.abstractmethod
    async def renew(self, leases: list[Lease]) -> None:
        """Push back the expiry of live streams' leases; gone ones stay gone.

        Called every third of a lease's TTL, with no lease too: a backend may tidy up then.
        """

    @abc.abstractmethod
    async def settle(self, lease: Lease, quota: Quota, correction: int, day: int) -> None:
        """Release ``lease`` and correct its charge by ``correction`` tokens."""

    @abc.abstractmethod
    async def live(self, subject: str) -> int:
        """How many of ``subject``'s leases are held now."""

    async def ping(self) -> None:  # noqa: B027 - nothing to reach in-process.
        """Raise :class:`LimiterDown` unless the backend answers."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to close in-process.
        """Release connections; called once at shutdown."""
