"""The per-stream event log: the only buffer between a generation and its readers.

Event ``n`` (1, 2, 3…) is ``events[n - 1]``; readers keep an offset and read everything past
it at once, so a reader that fell behind gets all pending deltas in one batch instead of a
queue per reader. Memory is bounded by the output, not by the number of readers, and the
output is kept packed (:mod:`~tokenrelay.relay.packed`): about its text's size in bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tokenrelay.events import (
    DELTAS,
    TERMINAL,
    Event,
    Failed,
    Queued,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from tokenrelay.relay.packed import PackedEvents


class StreamLog:
    __slots__ = (
        "_last",
        "_waiters",
        "accepted",
        "answered",
        "closed",
        "events",
        "on_append",
        "usage",
    )

    def __init__(self) -> None:
        self.events = PackedEvents()
        """Every event so far; ``events[i]`` and slices make the events from the buffer."""
        self._last: Event | None = None
        self.accepted = False
        self.closed = False
        self.answered = False
        """Whether any output (a delta of any kind) has been appended."""
        self.usage: Usage | None = None
        """The newest ``Usage`` event, if any."""
        self._waiters: list[asyncio.Future[bool]] = []
        # Told of every append: how a shared log (Redis) learns what to copy.
        self.on_append: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self.events)

    @property
    def last(self) -> Event:
        """The newest event (a log always has one, ``Opened``, once its stream exists)."""
        if self._last is None:
            raise IndexError("the log is empty")
        return self._last

    def append(self, event: Event) -> None:
        if self.closed:
            return
        self.events.append(event)
        self._last = event
        if type(event) is not TextDelta:
            if isinstance(event, TERMINAL):
                self.closed = True
                self.events.seal()
            elif isinstance(event, DELTAS):
                self.answered = True
            elif type(event) is Usage:
                self.usage = event
        else:
            self.answered = True
        self._wake()
        if self.on_append is not None:
            self.on_append()

    def mark_accepted(self) -> None:
        if not self.accepted:
            self.accepted = True
            self._wake()

    @property
    def committed(self) -> bool:
        """Whether a wire may start its response: the upstream took the request or it ended."""
        return self.accepted or self.closed or len(self.events) > 1

    @property
    def error_before_start(self) -> Failed | None:
        """The failure to answer as an HTTP status: one that came before the upstream took it."""
        if self.closed and not self.accepted and not self.answered:
            last = self._last
            if isinstance(last, Failed):
                return last
        return None

    def read(self, offset: int, max_chars: int) -> list[Event]:
        """The events past ``offset`` carrying about ``max_chars`` of text (at least one event).

        A reader far behind takes its backlog in slices, so each of its writes stays small:
        one write of everything pending would copy the whole output into its socket buffer.
        (The size is counted in UTF-8 bytes, which is what the write holds.)
        """
        if offset == len(self.events) - 1 and self._last is not None:
            # A reader keeping up takes the event just appended: the object itself, not a copy
            # made from the buffer.
            return [self._last]
        return self.events.between(offset, len(self.events), max_chars)

    def text(self) -> str:
        return self.events.text()

    async def wait(self, offset: int, timeout: float | None = None) -> bool:
        """Wait until there is an event past ``offset``, the log changes, or it is closed.

        Returns False on timeout (the caller's cue to send a keep-alive). A True return may
        bring no new event (the log was only marked accepted): callers re-check.
        """
        if len(self.events) > offset or self.closed:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        # A bare timer on the future: asyncio.timeout costs several times more, once per token.
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        woken = False
        try:
            woken = await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if not woken:
                waiter.cancel()
                # Unless a wake has already taken the list it was in.
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return woken

    async def wait_committed(self, timeout: float | None = None) -> bool:
        while not self.committed:
            if not await self.wait(len(self.events), timeout):
                return False
        return True

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def coalesce(events: list[Event], first_id: int) -> list[tuple[int, Event]]:
    """Merge each run of deltas of one kind into one, keeping the id of the run's last event.

    A reader that fell behind gets one frame per run instead of one per token: one for text,
    one for reasoning, one per tool call's arguments (a run is cut where the call changes, so
    arguments are never glued across calls); a run of ``Queued`` keeps only the newest position.
    """
    merged: list[tuple[int, Event]] = []
    run: list[str] = []
    head: Mergeable | None = None  # the run's first delta: its kind (and call) is the run's
    for event_id, event in enumerate(events, start=first_id):
        if type(event) is TextDelta and (head is None or type(head) is TextDelta):
            # The hot path: a run of text.
            if head is None:
                head = event
            run.append(event.text)
            continue
        if isinstance(event, _MERGEABLE):
            if head is not None and (
                type(head) is not type(event)
                or (
                    isinstance(event, ToolCallDelta)
                    and isinstance(head, ToolCallDelta)
                    and head.index != event.index
                )
            ):
                merged.append((event_id - 1, _joined(head, run)))
                run, head = [], None
            if head is None:
                head = event
            run.append(event.arguments if isinstance(event, ToolCallDelta) else event.text)
            continue
        if head is not None:
            merged.append((event_id - 1, _joined(head, run)))
            run, head = [], None
        if isinstance(event, Queued) and merged and isinstance(merged[-1][1], Queued):
            merged[-1] = (event_id, event)
        else:
            merged.append((event_id, event))
    if head is not None:
        merged.append((first_id + len(events) - 1, _joined(head, run)))
    return merged


Mergeable = TextDelta | ReasoningDelta | ToolCallDelta
_MERGEABLE = (TextDelta, ReasoningDelta, ToolCallDelta)


def _joined(head: Mergeable, run: list[str]) -> Event:
    if len(run) == 1:
        return head
    if isinstance(head, ToolCallDelta):
        return ToolCallDelta(head.index, "".join(run))
    if isinstance(head, ReasoningDelta):
        return ReasoningDelta("".join(run))
    return TextDelta("".join(run))
