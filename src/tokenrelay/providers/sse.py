"""An incremental Server-Sent Events decoder, exact to the WHATWG HTML standard.

Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Feed it ``bytes`` as they arrive from the network and get back the events they complete::

    decoder = SSEDecoder()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            ...
    if decoder.pending:
        ...  # the stream ended inside an event or a line: it was truncated

Lines are split on bytes (CR, LF and CRLF are ASCII and never occur inside a multi-byte UTF-8
sequence) and only complete lines are decoded, so a character split across chunks is never
broken. Field names are compared as bytes; values are decoded once per event.

The spec sets no size limit; this decoder does (``max_event``): an unfinished line and an
undispatched event's data both count, so an upstream cannot make the gateway hold an endless
line or event.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenrelay import errors

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A
MAX_EVENT = 1024 * 1024
"""Bytes of one event (its data lines, or a line not ended yet) the decoder holds at most."""


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event: what ``MessageEvent`` would carry in a browser."""

    event: str = "message"
    data: str = ""
    id: str = ""
    # The reconnection time set by a ``retry`` field in this event's block, if any.
    retry: int | None = None


class SSEDecoder:
    """Turn a byte stream into :class:`SSEEvent` objects; one decoder per stream."""

    __slots__ = (
        "_after_cr",
        "_bom_done",
        "_data",
        "_data_size",
        "_event_type",
        "_in_event",
        "_last_event_id",
        "_partial",
        "_partial_size",
        "_retry",
        "max_event",
        "retry",
    )

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self.max_event = max_event
        self._partial_size = 0
        self._data_size = 0
        self._partial: list[bytes] = []  # pieces of a line whose end has not arrived yet
        self._after_cr = False  # the previous chunk ended with CR: a leading LF is its pair
        self._bom_done = False
        self._data: list[bytes] = []
        self._event_type = b""
        self._last_event_id = ""
        self._retry: int | None = None
        self._in_event = False
        self.retry: int | None = None
        """The latest reconnection time (ms) the stream set, in any block."""

    @property
    def last_event_id(self) -> str:
        """The last event ID buffer: it persists across events until an ``id`` field."""
        return self._last_event_id

    @property
    def pending(self) -> bool:
        """True when the input so far ends inside a line or inside an undispatched event.

        Spec: at end of file "any pending data must be discarded" -- for a provider this means
        the upstream stopped mid-event, i.e. the stream was truncated.
        """
        return bool(self._partial) or self._in_event

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return the events it completes (often none or one)."""
        if not chunk:
            return []
        if self._after_cr:
            self._after_cr = False
            # Spec: "a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF) character pair" is one
            # line end, even when the network splits it between two chunks.
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if not self._bom_done:
            head = b"".join(self._partial) + chunk
            # Spec: "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are
            # present" -- only one, so a second BOM becomes part of the first field name.
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._partial = [head]
                return []
            self._bom_done = True
            self._partial = []
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
            if not chunk:
                return []

        # bytes.splitlines splits on exactly CR, LF and CRLF: the spec's end-of-line set.
        lines = chunk.splitlines()
        last = chunk[-1]
        if last == _CR:
            self._after_cr = True
        elif last != _LF:
            # The final line has no end yet: keep it for the next chunk.
            tail = lines.pop()
            if not lines:
                self._partial.append(tail)
                self._partial_size += len(tail)
                self._check_size()
                return []
            if self._partial:
                lines[0] = b"".join(self._partial) + lines[0]
            self._partial = [tail]
            self._partial_size = 0
            events = self._process(lines)
            self._partial_size = len(tail)
            self._check_size()
            return events
        if self._partial:
            lines[0] = b"".join(self._partial) + lines[0]
            self._partial = []
            self._partial_size = 0
        return self._process(lines)

    def _process(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                # Spec: "If the line is empty (a blank line) -> Dispatch the event."
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            if line[0] == _COLON:
                # Spec: "If the line starts with a U+003A COLON character (:) -> Ignore the
                # line." (comments: keep-alives such as OpenRouter's ": OPENROUTER PROCESSING")
                continue
            self._in_event = True
            colon = line.find(b":")
            if colon < 0:
                # Spec: no colon -> "using the whole line as the field name, and the empty
                # string as the field value."
                self._field(line, b"")
                continue
            value = line[colon + 1 :]
            # Spec: "If value starts with a U+0020 SPACE character, remove it from value."
            # Only one space: "data:  x" keeps " x".
            if value[:1] == b" ":
                value = value[1:]
            self._field(line[:colon], value)
        return events

    def _field(self, name: bytes, value: bytes) -> None:
        # Spec: field names are compared literally (case-sensitive, no normalisation).
        if name == b"data":
            # Spec: "Append the field value to the data buffer, then append a single U+000A
            # LINE FEED (LF) character to the data buffer." -- joined with LF at dispatch.
            self._data.append(value)
            self._data_size += len(value) + 1
            self._check_size()
        elif name == b"event":
            # Spec: "Set the event type buffer to field value."
            self._event_type = value
        elif name == b"id":
            # Spec: "If the field value does not contain U+0000 NULL, then set the last event
            # ID buffer to the field value. Otherwise, ignore the field."
            if b"\x00" not in value:
                self._last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            # Spec: "If the field value consists of only ASCII digits, then interpret the field
            # value as an integer in base ten" -- bytes.isdigit is ASCII-only and False on b"".
            if value.isdigit():
                self._retry = self.retry = int(value)
        # Spec: "Otherwise -> The field is ignored."

    def _check_size(self) -> None:
        if self._partial_size + self._data_size > self.max_event:
            raise errors.UpstreamError(
                f"the upstream sent an event or line over {self.max_event} bytes"
            )

    def _dispatch(self) -> SSEEvent | None:
        self._in_event = False
        self._data_size = 0
        retry, self._retry = self._retry, None
        if not self._data:
            # Spec: "If the data buffer is an empty string, set the data buffer and the event
            # type buffer to the empty string and return." (a lone ``data:`` line is not empty:
            # it dispatches an event whose data is "")
            self._event_type = b""
            return None
        # Spec: "If the data buffer's last character is a U+000A LINE FEED (LF) character, then
        # remove the last character" -- joining with LF leaves no trailing one to remove.
        # Decoding the joined block equals decoding the stream: LF never ends a UTF-8 sequence
        # early, and "replace" gives U+FFFD per maximal invalid subpart as the spec's decoder.
        data = b"\n".join(self._data).decode("utf-8", "replace")
        event_type = self._event_type.decode("utf-8", "replace") if self._event_type else ""
        self._data = []
        self._event_type = b""
        # Spec: the type is the event type buffer if not empty, else "message"; the event's
        # lastEventId is the last event ID buffer, which persists across events.
        return SSEEvent(event_type or "message", data, self._last_event_id, retry)
