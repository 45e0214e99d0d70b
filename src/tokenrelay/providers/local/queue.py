"""The fair queue in front of a local model: one generation at a time, the rest in order."""

from __future__ import annotations

import asyncio
import collections

from tokenrelay import errors


class Ticket:
    __slots__ = ("granted", "wake")

    def __init__(self) -> None:
        self.granted = False
        self.wake = asyncio.Event()


class FairSlot:
    """One holder at a time; the others wait in arrival order, at most ``max_waiting``."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.busy = False
        self.waiting: collections.deque[Ticket] = collections.deque()

    def join(self, retry_after: float) -> Ticket:
        ticket = Ticket()
        if not self.busy:
            self.busy = ticket.granted = True
        elif len(self.waiting) >= self.max_waiting:
            raise errors.ConcurrencyLimited(
                f"the local model is busy and {len(self.waiting)} requests are already waiting",
                retry_after=retry_after,
            )
        else:
            self.waiting.append(ticket)
        return ticket

    def position(self, ticket: Ticket) -> int:
        return self.waiting.index(ticket) + 1

    def leave(self, ticket: Ticket) -> None:
        moved = list(self.waiting)
        if ticket.granted:
            self.busy = False
            if self.waiting:
                head = self.waiting.popleft()
                head.granted = self.busy = True
        else:
            self.waiting.remove(ticket)
        # The next in line got the model and everyone behind moved up a place: tell them.
        for waiter in moved:
            waiter.wake.set()
