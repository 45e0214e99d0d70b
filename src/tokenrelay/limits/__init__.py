"""Who may stream how much: rate, concurrency and budget limits, in-process or in Redis."""

from __future__ import annotations

from tokenrelay.config import Settings
from tokenrelay.limits.base import Decision, Lease, Limiter, LimiterDown
from tokenrelay.limits.gate import Gate, Ticket
from tokenrelay.limits.headers import RateLimitHeaders
from tokenrelay.limits.memory import MemoryLimiter

__all__ = [
    "Decision",
    "Gate",
    "Lease",
    "Limiter",
    "LimiterDown",
    "MemoryLimiter",
    "RateLimitHeaders",
    "Ticket",
    "build_limiter",
]


def build_limiter(settings: Settings) -> Limiter:
    """In-process counters, or Redis's when ``redis_url`` is set (the ``redis`` extra)."""
    limits = settings.rate_limits
    if settings.redis_url is None:
        return MemoryLimiter(limits.lease_ttl)
    from tokenrelay.limits.redis import RedisLimiter, connect

    client = connect(settings.redis_url, limits.redis_timeout)
    return RedisLimiter(client, lease_ttl=limits.lease_ttl, prefix=limits.key_prefix)
