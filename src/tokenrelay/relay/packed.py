"""A stream's events, packed: one byte buffer of delta text and one code byte per event.

Every relayed token stays in its stream's log so that clients can resume, so the log's cost
per token is what a long reply holds for its whole life. A frozen dataclass and its string
per token cost about 100 bytes; here a text token costs its UTF-8 bytes and one code byte,
and event objects are made again only when a reader asks for them.

Each event has one code byte in ``codes``; its top two bits are its kind:

* text, reasoning: the delta's UTF-8 is the next ``n`` bytes of ``data``;
* tool-call arguments: the next ``n`` bytes of ``data`` are the call's index (one byte) and
  the fragment's UTF-8;
* any other event (``Opened``, ``Usage``, ``Finish``…, kinds added later, and the rare deltas
  that do not fit the above): kept as the object itself in ``others``, no bytes in ``data``.

``n``, the low six bits, is the length when it is under 63; 63 means a four-byte length comes
first in ``data``. Finding event ``i`` means adding up lengths from the last mark before it
(the byte offset of every ``MARK``-th event), or from where the previous read ended.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence
from typing import overload

from tokenrelay.events import Event, ReasoningDelta, TextDelta, ToolCallDelta

TEXT, REASONING, ARGUMENTS, OTHER = 0x00, 0x40, 0x80, 0xC0
KIND, LENGTH = 0xC0, 0x3F
LONG = LENGTH  # the length field saying "four length bytes follow"
MARK = 64
_LONG_BYTES = 4


class PackedEvents(Sequence[Event]):
    """An append-only sequence of events; ``self[i]`` makes event ``i`` anew each time."""

    __slots__ = ("_cursor", "_marks", "codes", "data", "others", "text_bytes")

    def __init__(self) -> None:
        self.data = bytearray()
        self.codes = bytearray()
        self.others: dict[int, Event] = {}
        # Four bytes a mark: a stream's text never nears 4 GiB (limits.max_tokens).
        self._marks = array("I")
        # (index, byte offset) where the last read stopped: the next read starts there.
        self._cursor = (0, 0)
        self.text_bytes = 0
        """UTF-8 bytes of the deltas' text (and arguments) held in ``data``."""

    def __len__(self) -> int:
        return len(self.codes)

    def append(self, event: Event) -> None:
        if len(self.codes) % MARK == 0:
            self._marks.append(len(self.data))
        if type(event) is TextDelta:
            self._put(TEXT, event.text.encode("utf-8", "surrogatepass"))
        elif type(event) is ReasoningDelta:
            self._put(REASONING, event.text.encode("utf-8", "surrogatepass"))
        elif type(event) is ToolCallDelta and 0 <= event.index < 256:
            arguments = event.arguments.encode("utf-8", "surrogatepass")
            self._put(ARGUMENTS, bytes((event.index,)) + arguments)
            self.text_bytes -= 1
        else:
            self.others[len(self.codes)] = event
            self.codes.append(OTHER)

    def seal(self) -> None:
        """No more appends: the buffers shrink to their size (a growing one keeps up to an
        eighth more for its next appends)."""
        # A copy is made at its exact size.
        self.data, self.codes = bytearray(self.data), bytearray(self.codes)

    def _put(self, kind: int, raw: bytes) -> None:
        size = len(raw)
        self.text_bytes += size
        if size < LONG:
            self.codes.append(kind | size)
        else:
            self.codes.append(kind | LONG)
            self.data += size.to_bytes(_LONG_BYTES, "little")
        self.data += raw

    def _offset(self, index: int) -> int:
        """The byte offset in ``data`` where event ``index`` starts."""
        at, pos = self._cursor
        if not at <= index < at + MARK:
            at = index - index % MARK
            pos = self._marks[at // MARK]
        codes, data = self.codes, self.data
        while at < index:
            pos = _skip(codes[at], data, pos)
            at += 1
        return pos

    def between(self, start: int, stop: int, max_bytes: float = math.inf) -> list[Event]:
        """Events ``start`` to ``stop`` (exclusive), made from the buffer; with ``max_bytes``,
        only as many as carry about that much text (at least one)."""
        stop = min(stop, len(self.codes))
        if start >= stop:
            return []
        pos = self._offset(start)
        codes, data, others = self.codes, self.data, self.others
        out: list[Event] = []
        index, size = start, 0
        while index < stop and size < max_bytes:
            code = codes[index]
            kind = code & KIND
            index += 1
            if kind == OTHER:
                event = others[index - 1]
                out.append(event)
                if type(event) is ToolCallDelta:
                    size += len(event.arguments)
                continue
            length = code & LENGTH
            if length == LONG:
                length = int.from_bytes(data[pos : pos + _LONG_BYTES], "little")
                pos += _LONG_BYTES
            end = pos + length
            size += length
            if kind == TEXT:
                out.append(TextDelta(data[pos:end].decode("utf-8", "surrogatepass")))
            elif kind == REASONING:
                out.append(ReasoningDelta(data[pos:end].decode("utf-8", "surrogatepass")))
            else:
                arguments = data[pos + 1 : end].decode("utf-8", "surrogatepass")
                out.append(ToolCallDelta(data[pos], arguments))
            pos = end
        self._cursor = (index, pos)
        return out

    def text(self) -> str:
        """The text deltas' text, joined."""
        pos, parts = 0, []
        codes, data = self.codes, self.data
        for code in codes:
            if code & KIND == OTHER:
                continue
            start = pos
            pos = _skip(code, data, pos)
            if code & KIND == TEXT:
                parts.append(data[start:pos][_LONG_BYTES if code & LENGTH == LONG else 0 :])
        return b"".join(parts).decode("utf-8", "surrogatepass")

    def nbytes(self) -> int:
        """What the buffers hold (the objects kept as they are not counted): for the bound."""
        return len(self.data) + len(self.codes) + self._marks.itemsize * len(self._marks)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self.codes))
            events = self.between(start, stop)
            return events if step == 1 else events[::step]
        if index < 0:
            index += len(self.codes)
        if not 0 <= index < len(self.codes):
            raise IndexError("event index out of range")
        return self.between(index, index + 1)[0]

    def __reversed__(self) -> Iterator[Event]:
        end = len(self.codes)
        while end > 0:
            start = max(0, end - 256)
            yield from reversed(self.between(start, end))
            end = start

    def __iter__(self) -> Iterator[Event]:
        # In slices, so that iterating a long log never makes every event at once.
        for start in range(0, len(self.codes), 256):
            yield from self.between(start, start + 256)


def _skip(code: int, data: bytearray, pos: int) -> int:
    """The offset past event ``code`` whose bytes start at ``pos``."""
    if code & KIND == OTHER:
        return pos
    size = code & LENGTH
    if size == LONG:
        return pos + _LONG_BYTES + int.from_bytes(data[pos : pos + _LONG_BYTES], "little")
    return pos + size
