"""Redis clients for the parts that share state through Redis (limits, the stream log)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, timeout: float, max_connections: int = 64) -> Redis:
    """A client whose every call gives up after ``timeout``, on at most ``max_connections``."""
    # A burst of calls waits (up to ``timeout``) for one of a bounded set of connections
    # instead of opening one each.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # A retry would multiply the time a dead Redis costs; the next request tries anew.
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)
