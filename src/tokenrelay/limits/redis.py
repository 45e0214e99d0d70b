"""The shared limiter: counters in Redis, every decision one Lua script.

A script runs atomically on the Redis server, so the read (levels, live leases), the decision
and the write happen with no other instance's command in between: two gateways never both
take the last slot. Time is Redis's own ``TIME``, one clock for every instance. A subject's
two keys share a hash tag (``{…}``), so the scripts also run on Redis Cluster.

Each call is bounded by short socket timeouts and no retries: a Redis that is down costs a
request ``redis_timeout`` at most, and the gateway's policy decides what happens then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tokenrelay.config import Quota
from tokenrelay.limits.base import Decision, Lease, Limiter, LimiterDown
from tokenrelay.redis_pool import connect

__all__ = ["RedisLimiter", "connect"]

# Each function mirrors its namesake in limits/base.py; keep them in step.
_PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local function refill(level, at, capacity)
  if not level then return capacity end
  local elapsed = math.max(0, now - tonumber(at))
  return math.min(capacity, tonumber(level) + elapsed * capacity / 60)
end
"""

ADMIT = (
    _PRELUDE
    + """
local rpm, slots = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm, tpd = tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, lease, ttl = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local day = math.floor(now / 86400)
local state = redis.call('HMGET', KEYS[1], 'r', 'ra', 't', 'ta', 'd', 'u')
local requests, tokens = false, false
if rpm > 0 then requests = refill(state[1], state[2], rpm) end
if tpm > 0 then tokens = refill(state[3], state[4], tpm) end
local used = 0
if tonumber(state[5]) == day then used = tonumber(state[6]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local live = redis.call('ZCARD', KEYS[2])

local code, retry = '', 0
if tpd > 0 and used + math.min(cost, tpd) > tpd then
  code, retry = 'budget_exceeded', (day + 1) * 86400 - now
elseif slots > 0 and live >= slots then
  code, retry = 'concurrency_limited', 1
elseif requests and requests < 1 then
  code, retry = 'rate_limited', (1 - requests) * 60 / rpm
elseif tokens and tokens < math.min(cost, tpm) then
  code, retry = 'rate_limited', (math.min(cost, tpm) - tokens) * 60 / tpm
end
if code == '' then
  if requests then
    requests = requests - 1
    redis.call('HSET', KEYS[1], 'r', requests, 'ra', now)
  end
  if tokens then
    tokens = tokens - cost
    redis.call('HSET', KEYS[1], 't', tokens, 'ta', now)
  end
  redis.call('HSET', KEYS[1], 'd', day, 'u', used + cost)
  redis.call('EXPIRE', KEYS[1], 2 * 86400 + 60)
  redis.call('ZADD', KEYS[2], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 2000))
  live = live + 1
end
return {code, tostring(retry), tostring(requests or ''), tostring(tokens or ''), live, day}
"""
)

SETTLE = (
    _PRELUDE
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
local correction, day, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if correction == 0 then return 0 end
local state = redis.call('HMGET', KEYS[1], 't', 'ta', 'd', 'u')
if tpm > 0 and state[1] then
  local level = refill(state[1], state[2], tpm)
  redis.call('HSET', KEYS[1], 't', math.min(tpm, level - correction), 'ta', now)
end
if tonumber(state[3]) == day then
  redis.call('HSET', KEYS[1], 'u', math.max(0, tonumber(state[4]) + correction))
end
return 1
"""
)

RENEW = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 2000))
return 1
"""
)

LIVE = (
    _PRELUDE
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. tostring(now), '+inf')
"""
)


class RedisLimiter(Limiter):
    def __init__(self, client: Redis, *, lease_ttl: float, prefix: str) -> None:
        super().__init__(lease_ttl)
        self.client = client
        self.prefix = prefix
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._renew = client.register_script(RENEW)
        self._live = client.register_script(LIVE)

    def _keys(self, subject: str) -> list[str]:
        state = f"{self.prefix}:{{{subject}}}"
        return [state, state + ":leases"]

    async def _call(self, script: Any, keys: list[str], args: list[object]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimiterDown(f"redis: {type(exc).__name__}: {exc}") from exc

    async def admit(self, subject: str, quota: Quota, cost: int, lease: str) -> Decision:
        args: list[object] = [
            quota.requests_per_minute or 0,
            quota.concurrent_streams or 0,
            quota.tokens_per_minute or 0,
            quota.tokens_per_day or 0,
            cost,
            lease,
            self.lease_ttl,
        ]
        code, retry, requests, tokens, live, day = await self._call(
            self._admit, self._keys(subject), args
        )
        return Decision(
            code=_text(code) or None,
            retry_after=float(retry),
            requests=float(requests) if _text(requests) else None,
            tokens=float(tokens) if _text(tokens) else None,
            live=int(live),
            day=int(day),
        )

    async def renew(self, leases: list[Lease]) -> None:
        by_subject: dict[str, list[str]] = {}
        for lease in leases:
            by_subject.setdefault(lease.subject, []).append(lease.id)
        await asyncio.gather(
            *(
                self._call(self._renew, self._keys(subject)[1:], [self.lease_ttl, *ids])
                for subject, ids in by_subject.items()
            )
        )

    async def settle(self, lease: Lease, quota: Quota, correction: int, day: int) -> None:
        args: list[object] = [lease.id, correction, day, quota.tokens_per_minute or 0]
        await self._call(self._settle, self._keys(lease.subject), args)

    async def live(self, subject: str) -> int:
        return int(await self._call(self._live, self._keys(subject)[1:], []))

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise LimiterDown(f"redis: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self.client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
