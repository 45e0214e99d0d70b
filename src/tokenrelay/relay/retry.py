"""Which provider to try next, and how long to wait first.

A model is tried ``1 + retries`` times, then each of its fallbacks the same way, but only
while the client has seen no text: after the first token a stream never silently switches.
Waits between tries of one model are exponential with full jitter (so a crowd of retries
spreads out), or the upstream's ``Retry-After`` when it asks for a wait we are willing to make.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from tokenrelay import errors
from tokenrelay.providers.base import Provider

# A Retry-After longer than this is not worth holding the client for: fall back instead.
MAX_WAIT = 10.0


def worth_retrying(exc: errors.TokenRelayError) -> bool:
    """Connect failures, upstream 5xx and 429s: the next try may well work.

    Time limits are not retried: the client has already waited the whole limit once.
    """
    return isinstance(exc, errors.UpstreamUnavailable | errors.UpstreamRateLimited)


@dataclass(slots=True, frozen=True)
class Attempt:
    provider: Provider
    number: int  # 1-based, across all candidates
    try_of_model: int  # 1-based, within this provider


def attempts(primary: Provider, providers: dict[str, Provider]) -> Iterator[Attempt]:
    number = 0
    for provider in (primary, *(providers[name] for name in primary.config.fallbacks)):
        for try_of_model in range(1, provider.config.retries + 2):
            number += 1
            yield Attempt(provider, number, try_of_model)


def wait_before(next_try: Attempt, failure: errors.TokenRelayError) -> float | None:
    """Seconds to wait before ``next_try`` after ``failure``; None to skip that try."""
    if next_try.try_of_model == 1:
        return 0.0  # a different model: no reason to wait
    if failure.retry_after is not None:
        return failure.retry_after if failure.retry_after <= MAX_WAIT else None
    config = next_try.provider.config
    ceiling = min(config.retry_backoff_max, config.retry_backoff * 2 ** (next_try.try_of_model - 2))
    return random.uniform(0, ceiling)
