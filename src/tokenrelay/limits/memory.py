"""The in-process limiter: one instance's counters, in a dict.

Nothing here awaits between reading and writing a subject's state, so on one event loop each
decision is atomic by construction.
"""

from __future__ import annotations

import time

from tokenrelay.config import Quota
from tokenrelay.limits.base import (
    DAY,
    Decision,
    Lease,
    Limiter,
    State,
    correct,
    decide,
    drop_expired,
)


class MemoryLimiter(Limiter):
    in_process = True

    def __init__(self, lease_ttl: float) -> None:
        super().__init__(lease_ttl)
        self.states: dict[str, State] = {}

    async def admit(self, subject: str, quota: Quota, cost: int, lease: str) -> Decision:
        state = self.states.setdefault(subject, State())
        return decide(state, quota, cost, lease, time.time(), self.lease_ttl)

    async def renew(self, leases: list[Lease]) -> None:
        now = time.time()
        for lease in leases:
            held = self.states.get(lease.subject)
            if held is not None and lease.id in held.leases:
                held.leases[lease.id] = now + self.lease_ttl
        self._forget_idle(now)

    async def settle(self, lease: Lease, quota: Quota, correction: int, day: int) -> None:
        state = self.states.get(lease.subject)
        if state is None:
            return
        state.leases.pop(lease.id, None)
        correct(state, quota, correction, day, time.time())

    async def live(self, subject: str) -> int:
        state = self.states.get(subject)
        return 0 if state is None else drop_expired(state, time.time())

    def _forget_idle(self, now: float) -> None:
        # Untouched for a day, with no lease, a subject's state is what a fresh one would be
        # (full buckets, a new day's tally): the dict only grows with the day's active users.
        for subject, state in list(self.states.items()):
            if not drop_expired(state, now) and now - state.touched > DAY:
                del self.states[subject]
