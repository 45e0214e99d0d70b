"""A stream's events, packed in one byte buffer: half a byte per event and its delta's text.

Every relayed token stays in its stream's log so that clients can resume, so the log's cost
per token is what a long reply holds for its whole life. A frozen dataclass and its string
per token cost about 100 bytes; here a text token costs its UTF-8 bytes and four bits, and
event objects are made again only when a reader asks for them.

``data`` is a run of groups, one per two events: a code byte (the even event's code in its low
four bits, the odd one's in its high four), then the first event's bytes, then the second's.
A code says what an event's bytes are:

* 1 to 14: a delta of that many bytes of UTF-8, of the same kind (and tool call) as the delta
  before it. Nearly every token of a reply is one of these.
* 15, ``HEAD``: a delta whose UTF-8 follows a head: one byte with the kind in its top two bits
  and the length in its low six (63: a four-byte length follows), then for tool-call arguments
  the call's index (one byte). The deltas after it with short codes are of its kind and call:
  a head starts a run.
* 0, ``OTHER``: any other event (``Opened``, ``Usage``, ``Finish``…, kinds added later, and
  the rare deltas that do not fit the above), kept as the object itself in ``others``; it has
  no bytes.

Finding event ``i`` means adding up lengths from where the previous read ended, or from the
last mark before it: the offset of every ``MARK``-th event's group. The first delta after a
mark always has a head, so a read can start at a mark knowing nothing of the events before it.
Most streams are only ever read where they end, so the marks are found the first time a read
needs one, and kept up from then on.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import overload

from tokenrelay.events import Event, ReasoningDelta, TextDelta, ToolCallDelta

# A run: the kind as the head's top bits have it, and for arguments the call's index above.
TEXT, REASONING, ARGUMENTS = 0x00, 0x40, 0x80
KIND, LENGTH = 0xC0, 0x3F
LONG = LENGTH  # the head's length field saying "four length bytes follow"
OTHER, HEAD = 0, 15
SHORT = 14  # the longest delta its code alone can say
MARK = 128  # even: a mark is where a group starts
NO_RUN = -1  # what a read starting at a mark knows of the run: nothing
_LONG_BYTES = 4


class PackedEvents(Sequence[Event]):
    """An append-only sequence of events; ``self[i]`` makes event ``i`` anew each time."""

    __slots__ = ("_count", "_cursor", "_group", "_marks", "_run", "data", "others")

    def __init__(self) -> None:
        self.data = bytearray()
        self.others: dict[int, Event] = {}
        self._count = 0
        self._group = 0
        """The offset of the newest group's code byte."""
        self._run = NO_RUN
        """The run the next short code would continue."""
        # Four bytes a mark: a stream's text never nears 4 GiB (limits.max_tokens).
        self._marks: array[int] | None = None
        # (index, offset, run, group) where the last read stopped: the next read starts there.
        self._cursor = (0, 0, NO_RUN, 0)

    def __len__(self) -> int:
        return self._count

    def append(self, event: Event) -> None:
        count, data = self._count, self.data
        self._count = count + 1
        odd = count & 1
        if not odd and count % MARK == 0:
            self._run = NO_RUN
            if self._marks is not None:
                self._marks.append(len(data))
        if type(event) is TextDelta:
            run, raw = TEXT, event.text.encode("utf-8", "surrogatepass")
        elif type(event) is ReasoningDelta:
            run, raw = REASONING, event.text.encode("utf-8", "surrogatepass")
        elif type(event) is ToolCallDelta and 0 <= event.index < 256:
            run = ARGUMENTS | event.index << 8
            raw = event.arguments.encode("utf-8", "surrogatepass")
        else:
            self.others[count] = event
            if not odd:
                self._group = len(data)
                data.append(OTHER)
            return
        size = len(raw)
        code = size if run == self._run and 0 < size <= SHORT else HEAD
        if odd:
            data[self._group] |= code << 4
        else:
            self._group = len(data)
            data.append(code)
        if code == HEAD:
            self._head(run, size)
        data += raw

    def seal(self) -> None:
        """No more appends: the buffer shrinks to its size (a growing one keeps up to an
        eighth more for its next appends)."""
        # A copy is made at its exact size.
        self.data = bytearray(self.data)
        if self._marks is not None:
            self._marks = array("I", self._marks)

    def _head(self, run: int, size: int) -> None:
        """Write the head of a delta that starts run ``run``."""
        data = self.data
        if size < LONG:
            data.append(run & KIND | size)
        else:
            data.append(run & KIND | LONG)
            data += size.to_bytes(_LONG_BYTES, "little")
        if run & KIND == ARGUMENTS:
            data.append(run >> 8)
        self._run = run

    def _seek(self, index: int) -> tuple[int, int, int]:
        """Where event ``index``'s bytes start: (offset, the run before it, its group)."""
        at, pos, run, group = self._cursor
        if not at <= index < at + MARK:
            if self._marks is None:
                self._marks = self._found_marks()
            at = index - index % MARK
            pos, run = self._marks[at // MARK], NO_RUN
        data = self.data
        while at < index:
            _, pos, run, group = _span(data, at, pos, run, group)
            at += 1
        return pos, run, group

    def _found_marks(self) -> array[int]:
        marks, pos, run, group = array("I"), 0, NO_RUN, 0
        for at in range(self._count):
            if at % MARK == 0:
                marks.append(pos)
            _, pos, run, group = _span(self.data, at, pos, run, group)
        return marks

    def between(self, start: int, stop: int, max_bytes: float = math.inf) -> list[Event]:
        """Events ``start`` to ``stop`` (exclusive), made from the buffer; with ``max_bytes``,
        only as many as carry about that much text (at least one)."""
        stop = min(stop, self._count)
        if start >= stop:
            return []
        pos, run, group = self._seek(start)
        data, others = self.data, self.others
        out: list[Event] = []
        index, size = start, 0
        while index < stop and size < max_bytes:
            first, pos, run, group = _span(data, index, pos, run, group)
            if first == pos and index in others:
                event = others[index]
                out.append(event)
                if type(event) is ToolCallDelta:
                    size += len(event.arguments)
            else:
                size += pos - first
                kind = run & KIND
                text = data[first:pos].decode("utf-8", "surrogatepass")
                if kind == TEXT:
                    out.append(TextDelta(text))
                elif kind == REASONING:
                    out.append(ReasoningDelta(text))
                else:
                    out.append(ToolCallDelta(run >> 8, text))
            index += 1
        self._cursor = (index, pos, run, group)
        return out

    def text(self) -> str:
        """The text deltas' text, joined."""
        data, pos, run, group, parts = self.data, 0, NO_RUN, 0, []
        for index in range(self._count):
            start, pos, run, group = _span(data, index, pos, run, group)
            if pos > start and run & KIND == TEXT:
                parts.append(data[start:pos])
        return b"".join(parts).decode("utf-8", "surrogatepass")

    def footprint(self) -> int:
        """The bytes its buffers take in memory, their headers and room to grow included (the
        events kept as objects not counted)."""
        marks = 0 if self._marks is None else sys.getsizeof(self._marks)
        return sys.getsizeof(self.data) + marks

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            events = self.between(start, stop)
            return events if step == 1 else events[::step]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("event index out of range")
        return self.between(index, index + 1)[0]

    def __reversed__(self) -> Iterator[Event]:
        end = self._count
        while end > 0:
            start = max(0, end - 256)
            yield from reversed(self.between(start, end))
            end = start

    def __iter__(self) -> Iterator[Event]:
        # In slices, so that iterating a long log never makes every event at once.
        for start in range(0, self._count, 256):
            yield from self.between(start, start + 256)


def _span(data: bytearray, index: int, pos: int, run: int, group: int) -> tuple[int, int, int, int]:
    """Event ``index``, whose bytes (or group) start at ``pos``: where its UTF-8 starts and ends,
    and the run and group it leaves. An event kept as an object has no bytes: start == end."""
    if index & 1:
        code = data[group] >> 4
    else:
        group = pos
        code = data[pos] & 0xF
        pos += 1
    if code == HEAD:
        pos, run, code = _head(data, pos)
    return pos, pos + code, run, group


def _head(data: bytearray, pos: int) -> tuple[int, int, int]:
    """The head at ``pos``: the offset past it, the run it starts, the delta's length."""
    byte = data[pos]
    pos += 1
    size = byte & LENGTH
    if size == LONG:
        size = int.from_bytes(data[pos : pos + _LONG_BYTES], "little")
        pos += _LONG_BYTES
    run = byte & KIND
    if run == ARGUMENTS:
        run |= data[pos] << 8
        pos += 1
    return pos, run, size
