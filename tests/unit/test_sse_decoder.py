"""The SSE decoder against the wire inputs of web-platform-tests' ``eventsource/format-*`` cases.

Each WPT case is a URL that makes a tiny server emit a body; the vectors below are those bodies
as bytes (with the trailing newlines the WPT ``message.py`` helper appends), and the events a
conforming parser dispatches from them. Every vector is also fed split at every byte offset and
one byte at a time: the network may cut anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tokenrelay import errors
from tokenrelay.providers.sse import SSEDecoder, SSEEvent


def ev(data: str, event: str = "message", id: str = "", retry: int | None = None) -> SSEEvent:
    return SSEEvent(event=event, data=data, id=id, retry=retry)


@dataclass(frozen=True)
class Vector:
    name: str
    wire: bytes
    events: list[SSEEvent]
    pending: bool = False
    retry: int | None = None


LONG = b"x" * 2048

WPT = [
    Vector(
        "format-bom",  # one leading BOM is stripped; a BOM later is part of a field name
        b"\xef\xbb\xbfdata:1\n\n\xef\xbb\xbfdata:2\n\ndata:3\n\n\n",
        [ev("1"), ev("3")],
    ),
    Vector(
        "format-bom-2",  # only ONE BOM is stripped: the second makes "\ufeffdata" unknown
        b"\xef\xbb\xbf\xef\xbb\xbfdata:1\n\ndata:2\n\ndata:3\n\n\n",
        [ev("2"), ev("3")],
    ),
    Vector(
        "format-comments",
        b"data:1\r:\x00\n:\r\ndata:2\n:"
        + LONG
        + b"\rdata:3\n:data:fail\r:"
        + LONG
        + b"\ndata:4\n\n",
        [ev("1\n2\n3\n4")],
    ),
    Vector(
        "format-data-before-final-empty-line",  # the last block never ends: not dispatched
        b"retry:1000\ndata:test1\n\nid:test\ndata:test2\n",
        [ev("test1", retry=1000)],
        pending=True,
        retry=1000,
    ),
    Vector(
        "format-field-data",  # "data:" alone dispatches ""; two bare "data" lines give "\n"
        b"data:\n\ndata\ndata\n\ndata:test\n\n\n",
        [ev(""), ev("\n"), ev("test")],
    ),
    Vector(
        "format-field-event",
        b"event:test\ndata:x\n\ndata:x\n\n\n",
        [ev("x", event="test"), ev("x")],
    ),
    Vector(
        "format-field-event-empty",  # "event: " is the empty type, which means "message"
        b"event: \ndata:data\n\n\n",
        [ev("data")],
    ),
    Vector(
        "format-field-id",  # resources/last-event-id: a non-ASCII id and a retry
        "id: …\nretry: 200\ndata: hello\n\n".encode(),
        [ev("hello", id="…", retry=200)],
        retry=200,
    ),
    Vector(
        "format-field-id-3 persists",
        b"id: 1\ndata: 1\n\ndata:2\n\n",
        [ev("1", id="1"), ev("2", id="1")],
    ),
    Vector(
        "format-field-id-3 changes and persists",
        b"id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n",
        [ev("1", id="1"), ev("2", id="2"), ev("3", id="2")],
    ),
    Vector(
        "format-field-id-3 resets",
        b"id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n",
        [ev("1", id="1"), ev("2"), ev("3")],
    ),
    Vector(
        # The stored WPT page predates the spec change that ignores an id containing NULL;
        # this follows the current standard ("Otherwise, ignore the field").
        "format-field-id-null",
        b"id: \x00\x00\nretry: 200\ndata: hello\n\n",
        [ev("hello", retry=200)],
        retry=200,
    ),
    Vector(
        "format-field-parsing",  # names are case-sensitive; NUL, leading space, dashes: unknown
        b"data:\x00\ndata:  2\rData:1\ndata\x00:2\ndata:1\r\x00data:4\nda-ta:3\rdata_5\n"
        b"data:3\rdata:\r\n data:32\ndata:4\n\n",
        [ev("\x00\n 2\n1\n3\n\n4")],
    ),
    Vector(
        "format-field-retry",  # base ten even with a leading zero
        b"retry:02000\ndata:x\n\n\n",
        [ev("x", retry=2000)],
        retry=2000,
    ),
    Vector(
        "format-field-retry-bogus",  # "1000x" is not only digits: ignored
        b"retry:2000\nretry:1000x\ndata:x\n\n\n",
        [ev("x", retry=2000)],
        retry=2000,
    ),
    Vector(
        "format-field-unknown",
        b"data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:test\n\n\n",
        [ev("test\n\ntest")],
    ),
    Vector(
        "format-leading-space",  # only a SPACE is stripped, and only one; a TAB stays
        b"data:\ttest\rdata: \ndata:test\n\n\n",
        [ev("\ttest\n\ntest")],
    ),
    Vector(
        "format-newlines",  # CRLF, LF and CR mixed; the final CR LF is one blank line
        b"data:test\r\ndata\ndata:test\r\n\r\n",
        [ev("test\n\ntest")],
    ),
    Vector(
        "format-null-character",
        b"data:\x00\n\n\n\n\n",
        [ev("\x00")],
    ),
    Vector(
        "format-utf-8",  # always UTF-8, whatever the Content-Type charset says
        b"data:ok\xe2\x80\xa6\n\n\n",
        [ev("ok…")],
    ),
]

OURS = [
    Vector(
        "openai stream with CRLF ends and a keep-alive comment",
        b': OPENROUTER PROCESSING\r\n\r\ndata: {"a":1}\r\n\r\n: ping\r\n\r\ndata: [DONE]\r\n\r\n',
        [ev('{"a":1}'), ev("[DONE]")],
    ),
    Vector(
        "CR only line ends",
        b"event: token\rdata: a\rdata: b\r\rdata: c\r\r",
        [ev("a\nb", event="token"), ev("c")],
    ),
    Vector(
        "multi-byte characters survive every split",
        "data: 👋 héllo 世界 🇫🇷\n\n".encode(),
        [ev("👋 héllo 世界 🇫🇷")],
    ),
    Vector(
        "invalid UTF-8 becomes U+FFFD per maximal subpart",
        b"data: a\xffb\xe2\x82c\xf0\x9f\n\n",
        [ev("a\ufffdb\ufffdc\ufffd")],
    ),
    Vector(
        "a block with no data field is not dispatched and resets the event type",
        b"event: ignored\nid: 7\n\ndata: x\n\n",
        [ev("x", id="7")],
    ),
    Vector(
        "an id containing NULL does not clobber the previous id",
        b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\n",
        [ev("a", id="1"), ev("b", id="1")],
    ),
    Vector("comments alone dispatch nothing and leave nothing pending", b": a\n:b\r\n\n", []),
    Vector("a stream cut inside a line is pending", b"data: x\n\ndata: {", [ev("x")], True),
    Vector("a stream cut after a field line is pending", b"data: x\n", [], True),
    Vector("a lone partial BOM is a pending line", b"\xef\xbb", [], True),
    Vector("a BOM alone is nothing", b"\xef\xbb\xbf", []),
    Vector("a field with no value", b"data\n\n", [ev("")]),
    Vector("a retry with no digits is ignored", b"retry\nretry: \nretry:-1\ndata:x\n\n", [ev("x")]),
]

VECTORS = WPT + OURS


def decode(chunks: list[bytes]) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events, decoder


def check(vector: Vector, chunks: list[bytes]) -> None:
    events, decoder = decode(chunks)
    assert events == vector.events, chunks
    assert decoder.pending is vector.pending, chunks
    assert decoder.retry == vector.retry


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_in_one_chunk(vector: Vector) -> None:
    check(vector, [vector.wire])


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_split_at_every_offset(vector: Vector) -> None:
    for offset in range(len(vector.wire) + 1):
        check(vector, [vector.wire[:offset], vector.wire[offset:]])


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_one_byte_at_a_time(vector: Vector) -> None:
    check(vector, [vector.wire[i : i + 1] for i in range(len(vector.wire))])


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # Regression: a CR ending one chunk and the LF starting the next must not make a blank
    # line, which would dispatch the event early.
    events, decoder = decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [ev("a\nb")]
    assert not decoder.pending


def test_lone_lf_after_a_cr_in_an_earlier_chunk_is_not_swallowed_twice() -> None:
    events, _ = decode([b"data: a\r", b"", b"\n", b"\n"])
    assert events == [ev("a")]


def test_last_event_id_persists_on_the_decoder() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 42\ndata: x\n\n")
    assert decoder.last_event_id == "42"
    assert decoder.feed(b"data: y\n\n") == [ev("y", id="42")]


def test_many_events_in_one_chunk() -> None:
    wire = b"".join(b'data: {"i":%d}\n\n' % i for i in range(1000))
    events, decoder = decode([wire])
    assert [e.data for e in events] == [f'{{"i":{i}}}' for i in range(1000)]
    assert not decoder.pending


def test_a_line_that_never_ends_is_refused_past_the_event_limit() -> None:
    decoder = SSEDecoder(max_event=1024)
    decoder.feed(b"data: " + b"a" * 600)
    with pytest.raises(errors.UpstreamError, match="over 1024 bytes"):
        for _ in range(10):
            decoder.feed(b"a" * 100)


def test_an_event_of_many_data_lines_is_refused_past_the_event_limit() -> None:
    decoder = SSEDecoder(max_event=1024)
    with pytest.raises(errors.UpstreamError, match="over 1024 bytes"):
        for _ in range(20):
            decoder.feed(b"data: " + b"a" * 100 + b"\n")


def test_events_under_the_limit_pass_however_they_are_split() -> None:
    decoder = SSEDecoder(max_event=1024)
    body = b"data: " + b"a" * 900 + b"\n\n"
    events = [e for _ in range(50) for part in (body[:300], body[300:]) for e in decoder.feed(part)]
    assert [len(e.data) for e in events] == [900] * 50
