"""The two limiter backends hold the same semantics: one suite, run on each.

The Redis backend runs against a real ``redis-server`` of this module's own; where two
gateways would share it, two limiters with separate connection pools stand in for them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.redis_server import RedisServer, redis_server
from tokenrelay.config import Quota
from tokenrelay.limits import Lease, Limiter, MemoryLimiter
from tokenrelay.limits.base import DAY
from tokenrelay.limits.redis import RedisLimiter, connect

Factory = Callable[[float], Limiter]


@pytest.fixture(scope="module")
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """None for in-process; the Redis URL otherwise (synchronous, to start Redis lazily)."""
    if request.param == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis")
    return server.url


@pytest.fixture
async def make(backend: str | None) -> AsyncIterator[Factory]:
    """Limiters with a given lease TTL; on Redis, each is a separate client."""
    made: list[Limiter] = []
    memory: dict[float, MemoryLimiter] = {}

    def factory(ttl: float = 30.0) -> Limiter:
        if backend is None:
            # One process has one set of counters: the same limiter stands in for "another".
            return memory.setdefault(ttl, MemoryLimiter(ttl))
        limiter = RedisLimiter(connect(backend, 0.5), lease_ttl=ttl, prefix="test")
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.aclose()


def subject() -> str:
    return "user:" + secrets.token_hex(6)


def lease() -> str:
    return "lease_" + secrets.token_hex(6)


async def test_200_concurrent_admissions_against_50_slots_admit_exactly_50(
    make: Factory,
) -> None:
    first, second = make(30), make(30)
    who, quota = subject(), Quota(concurrent_streams=50)
    decisions = await asyncio.gather(
        *((first if i % 2 else second).admit(who, quota, 10, lease()) for i in range(200))
    )

    admitted = [d for d in decisions if d.code is None]
    assert len(admitted) == 50
    assert {d.code for d in decisions if d.code is not None} == {"concurrency_limited"}
    assert sorted(d.live for d in admitted) == list(range(1, 51))
    assert await first.live(who) == await second.live(who) == 50


async def test_a_settled_lease_gives_its_slot_back(make: Factory) -> None:
    limiter = make(30)
    who, quota = subject(), Quota(concurrent_streams=1)
    held = lease()
    assert (await limiter.admit(who, quota, 1, held)).code is None
    refused = await limiter.admit(who, quota, 1, lease())
    await limiter.settle(Lease(who, held), quota, 0, 0)
    again = await limiter.admit(who, quota, 1, lease())

    assert refused.code == "concurrency_limited"
    assert refused.retry_after > 0
    assert again.code is None


async def test_a_lease_nobody_renews_expires_after_its_ttl(make: Factory) -> None:
    # The instance holding it "crashed": it neither renews nor releases the lease.
    limiter = make(0.4)
    who, quota = subject(), Quota(concurrent_streams=1)
    assert (await limiter.admit(who, quota, 1, lease())).code is None
    while_held = await limiter.admit(who, quota, 1, lease())
    await asyncio.sleep(0.6)
    after_ttl = await limiter.admit(who, quota, 1, lease())

    assert while_held.code == "concurrency_limited"
    assert after_ttl.code is None


async def test_a_renewed_lease_outlives_its_ttl(make: Factory) -> None:
    limiter = make(0.4)
    who, quota = subject(), Quota(concurrent_streams=1)
    held = lease()
    assert (await limiter.admit(who, quota, 1, held)).code is None
    for _ in range(8):
        await asyncio.sleep(0.1)
        await limiter.renew([Lease(who, held)])

    assert (await limiter.admit(who, quota, 1, lease())).code == "concurrency_limited"
    assert await limiter.live(who) == 1


async def test_renewing_a_released_lease_does_not_bring_it_back(make: Factory) -> None:
    limiter = make(30)
    who, quota = subject(), Quota(concurrent_streams=1)
    held = lease()
    await limiter.admit(who, quota, 1, held)
    await limiter.settle(Lease(who, held), quota, 0, 0)
    await limiter.renew([Lease(who, held)])

    assert await limiter.live(who) == 0


async def test_requests_per_minute_admit_that_many_then_say_when_to_retry(
    make: Factory,
) -> None:
    limiter = make(30)
    who, quota = subject(), Quota(requests_per_minute=3)
    decisions = [await limiter.admit(who, quota, 1, lease()) for _ in range(4)]

    assert [d.code for d in decisions] == [None, None, None, "rate_limited"]
    assert [round(d.requests or 0) for d in decisions[:3]] == [2, 1, 0]
    # One request comes back every 20 s.
    assert 15 < decisions[3].retry_after <= 20


async def test_a_charge_corrected_to_real_usage_frees_the_token_bucket(make: Factory) -> None:
    limiter = make(30)
    who, quota = subject(), Quota(tokens_per_minute=100)
    first = await limiter.admit(who, quota, 60, (held := lease()))
    too_much = await limiter.admit(who, quota, 60, lease())
    # The stream used 10 tokens, not the 60 estimated.
    await limiter.settle(Lease(who, held), quota, 10 - 60, first.day)
    after = await limiter.admit(who, quota, 60, lease())

    assert first.code is None and 39 < (first.tokens or 0) <= 41
    assert too_much.code == "rate_limited"
    assert after.code is None and 29 < (after.tokens or 0) <= 31


async def test_usage_beyond_the_estimate_is_a_debt_later_requests_wait_out(
    make: Factory,
) -> None:
    limiter = make(30)
    who, quota = subject(), Quota(tokens_per_minute=100)
    first = await limiter.admit(who, quota, 10, (held := lease()))
    await limiter.settle(Lease(who, held), quota, 160 - 10, first.day)
    refused = await limiter.admit(who, quota, 10, lease())

    assert refused.code == "rate_limited"
    # Level about -60: 70 tokens to wait for, at 100 a minute.
    assert 40 < refused.retry_after <= 43
    assert refused.tokens is not None and -61 < refused.tokens < -58


async def test_the_daily_budget_counts_real_usage_and_resets_at_midnight(make: Factory) -> None:
    limiter = make(30)
    who, quota = subject(), Quota(tokens_per_day=100)
    first = await limiter.admit(who, quota, 40, (held := lease()))
    await limiter.settle(Lease(who, held), quota, 10 - 40, first.day)
    # 10 used: 90 more fit, then nothing.
    second = await limiter.admit(who, quota, 90, lease())
    spent = await limiter.admit(who, quota, 1, lease())

    assert first.code is None and second.code is None
    assert spent.code == "budget_exceeded"
    until_midnight = DAY - time.time() % DAY
    assert abs(spent.retry_after - until_midnight) < 5


async def test_a_refused_request_costs_nothing(make: Factory) -> None:
    limiter = make(30)
    who = subject()
    quota = Quota(concurrent_streams=1, requests_per_minute=10, tokens_per_day=1000)
    first = await limiter.admit(who, quota, 100, lease())
    refusals = [await limiter.admit(who, quota, 100, lease()) for _ in range(5)]
    roomy = Quota(concurrent_streams=2, requests_per_minute=10, tokens_per_day=1000)
    after = await limiter.admit(who, roomy, 100, lease())

    assert first.code is None
    assert {r.code for r in refusals} == {"concurrency_limited"}
    # Only the two admissions took a request each.
    assert after.requests is not None and 7.9 < after.requests <= 8.1


async def test_users_have_separate_counters(make: Factory) -> None:
    limiter = make(30)
    quota = Quota(concurrent_streams=1, requests_per_minute=1)
    alice, bob = subject(), subject()
    decisions = [
        await limiter.admit(alice, quota, 1, lease()),
        await limiter.admit(bob, quota, 1, lease()),
        await limiter.admit(alice, quota, 1, lease()),
    ]

    assert [d.code for d in decisions] == [None, None, "concurrency_limited"]
