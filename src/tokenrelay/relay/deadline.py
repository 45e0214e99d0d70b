"""A deadline that cancels the current task, as ``asyncio.timeout_at`` does, with no timer of
its own.

Streams move their deadlines on every token (the idle limit) or every write (the send
timeout). Re-arming a timer each time cost about a quarter of the gateway's CPU per token; a
:class:`Deadline` only records a later deadline, and when its alarm rings early it is set
again, once, for the deadline then in force.

Every deadline of a loop shares that loop's :class:`_Alarms`: one heap and one loop timer. An
open stream holds two deadlines (the generation's and its response's); a loop timer apiece
cost about 550 bytes each under uvloop, a heap entry costs a tuple.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref

# Fewer stale entries than this are never worth a rebuild of the heap.
_COMPACT_ABOVE = 256
_RESOLUTION = 0.001


class _Alarms:
    """The loop's alarm clock for deadlines: a heap of ``(when, number, deadline)``.

    An entry is live while its deadline's ``_entry`` is that entry's number; a deadline set
    earlier or disarmed leaves its old entry behind as stale. Stale entries are skipped when
    they come due, and the heap is rebuilt without them once they outnumber the live ones, so
    finished streams never pile up in it.
    """

    # No reference to its loop: it is the loop's value in a WeakKeyDictionary.
    __slots__ = ("_at", "_heap", "_numbers", "_stale", "_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._numbers = itertools.count()
        self._stale = 0
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def set(self, deadline: Deadline, when: float) -> int:
        if deadline._entry is not None:
            deadline._entry = None
            self.forget()
        number = next(self._numbers)
        heapq.heappush(self._heap, (when, number, deadline))
        if when < self._at:
            self._arm(when)
        return number

    def forget(self) -> None:
        """One more entry went stale."""
        self._stale += 1
        if self._stale > _COMPACT_ABOVE and self._stale * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2]._entry == entry[1]]
            heapq.heapify(self._heap)
            self._stale = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._ring)
        self._at = when

    def _ring(self) -> None:
        self._timer = None
        self._at = math.inf
        heap = self._heap
        # Loop timers may ring a hair early (uvloop counts in milliseconds).
        now = asyncio.get_running_loop().time() + _RESOLUTION
        while heap and heap[0][0] <= now:
            _, number, deadline = heapq.heappop(heap)
            if deadline._entry == number:
                deadline._entry = None
                deadline._ring(now)
            else:
                self._stale -= 1
        if heap:
            self._arm(heap[0][0])


_alarms: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Alarms] = weakref.WeakKeyDictionary()


def _alarms_of(loop: asyncio.AbstractEventLoop) -> _Alarms:
    alarms = _alarms.get(loop)
    if alarms is None:
        alarms = _alarms[loop] = _Alarms()
    return alarms


class Deadline:
    """Cancel the task that made it when ``when`` passes; ``math.inf`` means no deadline.

    Use it like ``asyncio.timeout``: a ``CancelledError`` caught around the awaits it guards is
    the deadline's when :meth:`expired` says so (then it is absorbed), else it is re-raised.
    """

    __slots__ = ("_alarms", "_armed_at", "_cancelling", "_entry", "_fired", "_task", "when")

    def __init__(self, when: float = math.inf) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._alarms = _alarms_of(asyncio.get_running_loop())
        self._task: asyncio.Task[object] | None = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._entry: int | None = None
        self._armed_at = math.inf
        self.when = math.inf
        self.move(when)

    def move(self, when: float) -> None:
        self.when = when
        if when < self._armed_at:
            self._armed_at = when
            self._entry = self._alarms.set(self, when)

    def _ring(self, now: float) -> None:
        self._armed_at = math.inf
        if self._task is None:
            return
        if now < self.when:
            if self.when != math.inf:
                self.move(self.when)
            return
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether a ``CancelledError`` just caught is this deadline's own."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        # As asyncio.timeout: ours alone unless someone else asked to cancel the task too.
        return self._task.uncancel() <= self._cancelling

    def disarm(self) -> None:
        self.when = math.inf
        self._armed_at = math.inf
        if self._entry is not None:
            self._entry = None
            self._alarms.forget()
        if self._fired and self._task is not None:
            # Fired after the last guarded await: take back the cancel request it made.
            self._fired = False
            self._task.uncancel()
        # A stale heap entry may keep this object a while; it need not keep the task too.
        self._task = None
