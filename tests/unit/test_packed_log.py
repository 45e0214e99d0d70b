"""The packed stream log gives back exactly the events it was given, by index, slice and read."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from tokenrelay import errors
from tokenrelay.events import (
    Event,
    Failed,
    Finish,
    Opened,
    Queued,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from tokenrelay.relay.log import StreamLog, coalesce
from tokenrelay.relay.packed import MARK


@dataclass(slots=True, frozen=True)
class LaterKind:
    """An event kind the packing has never heard of (as ``RedactedReasoning`` will be)."""

    data: str


def every_kind() -> list[Event]:
    """A reply with each kind of event, texts of every length class, and awkward characters."""
    events: list[Event] = [Opened("str_1", "m"), Queued(2), Queued(1)]
    events += [TextDelta(" tok"), TextDelta(""), TextDelta("é"), TextDelta("🦊")]
    events += [TextDelta("x" * 62), TextDelta("y" * 63), TextDelta("z" * 5000)]
    # A lone surrogate, as a JSON escape split across chunks can leave one.
    events += [TextDelta("\ud83d"), TextDelta("\udc4d")]
    events += [ReasoningDelta("think"), ReasoningDelta("r" * 300), ReasoningSignature("sig")]
    events += [RedactedReasoning("EqQBCkYIARgCIkD")]
    events += [ToolCallStart(0, "call_1", "lookup"), ToolCallDelta(0, '{"q":')]
    events += [ToolCallDelta(0, "")]
    events += [ToolCallDelta(0, '"' + "a" * 100 + '"}'), ToolCallEnd(0)]
    events += [ToolCallStart(300, "call_2", "big"), ToolCallDelta(300, "{}"), ToolCallEnd(300)]
    events += [LaterKind("opaque"), TextDelta(" after")]  # type: ignore[list-item]
    events += [Usage(3, 7, cached_tokens=1, reasoning_tokens=2), Finish("stop")]
    return events


def filled(events: list[Event]) -> StreamLog:
    log = StreamLog()
    for event in events:
        log.append(event)
    return log


def test_every_kind_of_event_comes_back_equal_and_in_order() -> None:
    events = every_kind()
    log = filled(events)
    assert len(log) == len(events)
    assert list(log.events) == events
    assert list(reversed(log.events)) == events[::-1]
    assert [log.events[i] for i in range(len(events))] == events
    assert log.events[-1] == events[-1] == log.last
    assert log.usage == Usage(3, 7, cached_tokens=1, reasoning_tokens=2)


def test_every_slice_of_a_long_log_matches_the_list_it_was_made_from() -> None:
    events: list[Event] = [Opened("s", "m")]
    for i in range(3 * MARK + 5):
        events.append(ReasoningDelta(f"r{i}") if i % 7 == 3 else TextDelta("ab" * (i % 40)))
        if i % 50 == 0:
            events.append(Queued(i))
    log = filled(events)
    for start in range(0, len(events), 3):
        for stop in range(start, len(events) + 2, 5):
            assert log.events[start:stop] == events[start:stop], (start, stop)
    assert log.events[5:-3] == events[5:-3]
    assert log.events[::2] == events[::2]
    with pytest.raises(IndexError):
        log.events[len(events)]


def test_readers_keep_up_and_seek_back_while_the_log_grows() -> None:
    """Reads between appends: an odd event's code lands in a byte a read has already passed,
    and the marks are found at the first read that needs one and kept up after it."""
    events: list[Event] = [Opened("s", "m")]
    for i in range(4 * MARK + 3):
        if i % 97 == 5:
            events.append(ToolCallDelta(i % 3, '{"k":' + "v" * (i % 20)))
        elif i % 31 == 7:
            events.append(Queued(i))
        else:
            events.append(TextDelta("é" * (i % 9) if i % 11 else "long" * 20))
    log = StreamLog()
    follower, rng = 0, random.Random(17)
    for n, event in enumerate(events, start=1):
        log.append(event)
        got = log.events.between(follower, n)
        assert got == events[follower:n]
        follower = n
        back = rng.randrange(n)
        assert log.events[back] == events[back], (n, back)
        assert log.events[back:n] == events[back:n], (n, back)
    assert list(log.events) == events


def test_reads_slice_the_backlog_by_size_and_resume_exactly_where_they_stopped() -> None:
    events: list[Event] = [Opened("s", "m"), *(TextDelta(f"{i:04d}") for i in range(500))]
    events.append(Finish("stop"))
    log = filled(events)
    offset, seen = 0, []
    while offset < len(log):
        batch = log.read(offset, 64)
        assert batch, "a read brings at least one event"
        assert sum(len(e.text) for e in batch if isinstance(e, TextDelta)) <= 64 + 4
        seen += batch
        offset += len(batch)
    assert seen == events
    # One event at least, however small the size asked for.
    assert log.read(1, 1) == [events[1]]
    assert log.read(len(log), 64) == []


def test_coalescing_packed_reads_keeps_ids_and_text_exact() -> None:
    events = every_kind()
    log = filled(events)
    assert coalesce(log.read(0, 1 << 20), 1) == coalesce(events, 1)
    for resume_after in range(len(events)):
        merged = coalesce(log.read(resume_after, 1 << 20), resume_after + 1)
        assert merged == coalesce(events[resume_after:], resume_after + 1)


def test_text_joins_only_the_answer() -> None:
    log = filled(every_kind())
    expected = "".join(e.text for e in every_kind() if isinstance(e, TextDelta))
    assert log.text() == expected


def test_error_before_start_only_when_nothing_was_answered() -> None:
    failure = Failed(errors.UpstreamUnavailable("down"))
    assert filled([Opened("s", "m"), failure]).error_before_start == failure
    answered = filled([Opened("s", "m"), TextDelta("hi"), failure])
    assert answered.error_before_start is None
    assert answered.answered


def test_a_closed_log_takes_no_more_events() -> None:
    log = filled([Opened("s", "m"), TextDelta("a"), Finish("stop")])
    log.append(TextDelta("late"))
    assert len(log) == 3
    assert log.closed


def test_a_text_token_costs_about_its_utf8_bytes() -> None:
    """The bound is computed from the buffers' sizes: a 500-token reply of 4-byte tokens, open
    and closed, against the 100-odd bytes an event object and its string took per token."""
    token = " tok"
    for finished in (False, True):
        log = StreamLog()
        log.append(Opened("str_" + "x" * 22, "model"))
        for _ in range(500):
            log.append(TextDelta(token))
        if finished:
            log.append(Finish("stop"))
        packed = log.events
        text = 500 * len(token)
        # Half a code byte per token (1.125x for 4-byte tokens), up to an eighth kept for
        # growth while open, and the buffers' own headers.
        assert packed.footprint() <= text * 1.125 * (1.0 if finished else 1.13) + 250
