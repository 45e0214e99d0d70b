"""A deadline that cancels the current task, as ``asyncio.timeout_at`` does, with one timer.

Streams move their deadlines on every token (the idle limit) or every write (the send
timeout). Re-arming a timer each time cost about a quarter of the gateway's CPU per token; a
:class:`Deadline` only records a later deadline, and its timer, when it fires early, re-arms
itself once for the deadline then in force.
"""

from __future__ import annotations

import asyncio
import math


class Deadline:
    """Cancel the task that made it when ``when`` passes; ``math.inf`` means no deadline.

    Use it like ``asyncio.timeout``: a ``CancelledError`` caught around the awaits it guards is
    the deadline's when :meth:`expired` says so (then it is absorbed), else it is re-raised.
    """

    __slots__ = ("_armed_at", "_cancelling", "_fired", "_handle", "_loop", "_task", "when")

    def __init__(self, when: float = math.inf) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self.when = math.inf
        self.move(when)

    def move(self, when: float) -> None:
        self.when = when
        if when < self._armed_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._fire)
        self._armed_at = when

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        if self._loop.time() < self.when:
            if self.when != math.inf:
                self._arm(self.when)
            return
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether a ``CancelledError`` just caught is this deadline's own."""
        if not self._fired:
            return False
        self._fired = False
        # As asyncio.timeout: ours alone unless someone else asked to cancel the task too.
        return self._task.uncancel() <= self._cancelling

    def disarm(self) -> None:
        self.when = math.inf
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed_at = math.inf
        if self._fired:
            # Fired after the last guarded await: take back the cancel request it made.
            self._fired = False
            self._task.uncancel()
