"""The native SSE wire: ids and names on every event, resume, several viewers, cancel, grace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.gateway import Gateway, SSEEvent, parse_sse, read_sse, serve
from tokenrelay.events import Event, Failed, Finish, Opened, TextDelta, Usage
from tokenrelay.relay import Stream

NAMES = {"stream", "queued", "token", "usage", "done", "error"}
WORDS = [f"w{i:02d} " for i in range(20)]
FULL_TEXT = "".join(WORDS)


def body(**script: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "script": script}


def slow(count: int = 20, delay: float = 0.07) -> dict[str, Any]:
    words = [f"w{i:02d} " for i in range(count)]
    return body(tokens=words, delay=delay)


def text_of(events: list[SSEEvent]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "token")


def check_against_log(events: list[SSEEvent], log: list[Event], start_after: int = 0) -> None:
    """Every frame has an id and a name, and the ids walk the stream's log with no gap.

    A ``token`` frame may cover several deltas (a coalesced run) and then carries the id of
    the last one; every other frame is exactly the log event with its id.
    """
    previous = start_after
    for frame in events:
        assert frame.id is not None, frame
        assert frame.event in NAMES, frame
        event_id = int(frame.id)
        covered = log[previous:event_id]
        assert covered, f"id {event_id} does not move past {previous}"
        if frame.event == "token":
            assert all(isinstance(e, TextDelta) for e in covered), covered
            assert frame.json()["text"] == "".join(
                e.text for e in covered if isinstance(e, TextDelta)
            )
        else:
            assert len(covered) == 1, f"{frame.event} frame {event_id} skipped {covered[:-1]}"
            assert _name(covered[0]) == frame.event
        previous = event_id


def _name(event: Event) -> str:
    names: dict[type, str] = {
        Opened: "stream",
        TextDelta: "token",
        Usage: "usage",
        Finish: "done",
        Failed: "error",
    }
    return names[type(event)]


async def read_tokens(frames: AsyncIterator[SSEEvent], count: int) -> list[SSEEvent]:
    """Read until ``count`` token frames have arrived, then stop reading.

    Pass the same ``read_sse`` iterator to read on afterwards: it holds any partial frame.
    """
    seen: list[SSEEvent] = []
    tokens = 0
    async for event in frames:
        seen.append(event)
        tokens += event.event == "token"
        if tokens >= count:
            break
    return seen


async def read_all(source: aiohttp.ClientResponse | AsyncIterator[SSEEvent]) -> list[SSEEvent]:
    frames = read_sse(source) if isinstance(source, aiohttp.ClientResponse) else source
    return [event async for event in frames]


async def wait_until_finished(stream: Stream, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not stream.finished or (stream.task is not None and not stream.task.done()):
            await asyncio.sleep(0.01)


async def start_and_drop(
    http: aiohttp.ClientSession, gateway: Gateway, request: dict[str, Any], tokens: int
) -> tuple[str, list[SSEEvent]]:
    """Start a stream, read ``tokens`` token frames, then drop the connection."""
    response = await http.post(f"{gateway.url}/v1/streams", json=request)
    before = await read_tokens(read_sse(response), tokens)
    response.close()
    return response.headers["X-Stream-Id"], before


async def test_post_streams_stream_token_usage_done_each_with_id_and_name(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        request = body(tokens=WORDS, delay=0.005)
        async with http.post(f"{gateway.url}/v1/streams", json=request) as response:
            assert response.status == 200
            sid = response.headers["X-Stream-Id"]
            raw = await response.text()
        log = gateway.relay.get(sid).log.events

    events = _blocks(raw)
    assert events[0].event == "stream"
    assert events[0].id == "1"
    assert events[0].json() == {"stream_id": sid, "model": "demo"}
    names = [e.event for e in events]
    first_usage = names.index("usage")
    assert set(names[1:first_usage]) == {"token"}
    assert names[first_usage:] == ["usage", "done"]
    assert events[-1].json() == {"finish_reason": "stop"}
    assert events[first_usage].json() == {"prompt_tokens": 1, "completion_tokens": 20}
    assert text_of(events) == FULL_TEXT
    check_against_log(events, log)
    assert int(events[-1].id or 0) == len(log)


def _blocks(raw: str) -> list[SSEEvent]:
    """Parse raw SSE, also checking that no frame lacks its ``id:`` or ``event:`` line."""
    for block in raw.split("\n\n"):
        lines = block.split("\n")
        if any(line.startswith("data:") for line in lines):
            assert any(line.startswith("id: ") for line in lines), block
            assert any(line.startswith("event: ") for line in lines), block
    return list(parse_sse(raw))


async def test_resume_with_last_event_id_header_has_no_gap_or_duplicate(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        sid, before = await start_and_drop(http, gateway, slow(), tokens=5)
        last_id = int(before[-1].id or 0)
        headers = {"Last-Event-ID": str(last_id)}
        async with http.get(f"{gateway.url}/v1/streams/{sid}", headers=headers) as response:
            assert response.status == 200
            assert response.headers["X-Stream-Id"] == sid
            after = await read_all(response)
        log = gateway.relay.get(sid).log.events

    assert before[0].event == "stream"
    assert text_of(before) + text_of(after) == FULL_TEXT
    check_against_log(before, log)
    check_against_log(after, log, start_after=last_id)
    assert after[-1].event == "done"


async def test_resume_with_last_event_id_query_parameter_has_no_gap_or_duplicate(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        sid, before = await start_and_drop(http, gateway, slow(), tokens=3)
        last_id = int(before[-1].id or 0)
        url = f"{gateway.url}/v1/streams/{sid}?last_event_id={last_id}"
        async with http.get(url) as response:
            assert response.status == 200
            after = await read_all(response)
        log = gateway.relay.get(sid).log.events

    assert text_of(before) + text_of(after) == FULL_TEXT
    check_against_log(after, log, start_after=last_id)
    assert after[-1].event == "done"


async def test_resume_after_the_stream_finished_replays_the_rest_then_ends(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        sid, before = await start_and_drop(http, gateway, slow(delay=0.03), tokens=2)
        stream = gateway.relay.get(sid)
        await wait_until_finished(stream)
        assert stream.status == "complete"
        last_id = int(before[-1].id or 0)
        headers = {"Last-Event-ID": str(last_id)}
        async with http.get(f"{gateway.url}/v1/streams/{sid}", headers=headers) as response:
            assert response.status == 200
            after = await asyncio.wait_for(read_all(response), 5)
        # Resuming at the very end gets nothing more, and still ends.
        headers = {"Last-Event-ID": str(len(stream.log))}
        async with http.get(f"{gateway.url}/v1/streams/{sid}", headers=headers) as response:
            assert response.status == 200
            assert await asyncio.wait_for(response.read(), 5) == b""

    assert text_of(before) + text_of(after) == FULL_TEXT
    check_against_log(after, stream.log.events, start_after=last_id)
    assert [e.event for e in after[-2:]] == ["usage", "done"]


async def test_second_viewer_of_a_stream_sees_the_same_events(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        first = await http.post(f"{gateway.url}/v1/streams", json=slow(delay=0.05))
        sid = first.headers["X-Stream-Id"]
        async with http.get(f"{gateway.url}/v1/streams/{sid}") as second:
            assert second.status == 200
            seen_first, seen_second = await asyncio.gather(read_all(first), read_all(second))
        first.close()
        log = gateway.relay.get(sid).log.events

    for seen in (seen_first, seen_second):
        check_against_log(seen, log)
        assert text_of(seen) == FULL_TEXT
    # Coalescing may group deltas differently per reader; everything else is identical.
    assert _without_tokens(seen_first) == _without_tokens(seen_second)
    assert seen_first[0].json()["stream_id"] == sid


def _without_tokens(events: list[SSEEvent]) -> list[tuple[str | None, str, str]]:
    return [(e.id, e.event, e.data) for e in events if e.event != "token"]


async def test_delete_stops_the_generation_and_viewers_get_a_cancelled_error(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        viewer = await http.post(f"{gateway.url}/v1/streams", json=slow(count=200, delay=0.05))
        sid = viewer.headers["X-Stream-Id"]
        frames = read_sse(viewer)
        before = await read_tokens(frames, 2)
        async with http.delete(f"{gateway.url}/v1/streams/{sid}") as response:
            assert response.status == 200
            answer = await response.json()
        stream = gateway.relay.get(sid)
        # DELETE answers once the generation has stopped.
        assert stream.task is not None and stream.task.done()
        after = await asyncio.wait_for(read_all(frames), 5)
        viewer.close()
        tokens_at_cancel = len(stream.log)
        await asyncio.sleep(0.2)
        assert len(stream.log) == tokens_at_cancel
        async with http.delete(f"{gateway.url}/v1/streams/{sid}") as response:
            again = await response.json()

    assert answer == {"stream_id": sid, "cancelled": True, "status": "cancelled"}
    assert again == {"stream_id": sid, "cancelled": False, "status": "cancelled"}
    assert after[-1].event == "error"
    assert after[-1].json()["code"] == "cancelled"
    assert len(text_of(before) + text_of(after)) < 200 * 4
    check_against_log(before + after, stream.log.events)


async def test_last_viewer_leaving_keeps_the_stream_alive_for_the_grace_period(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(streams={"resume_grace": 0.5}) as gateway:
        sid, before = await start_and_drop(http, gateway, slow(delay=0.05), tokens=3)
        stream = gateway.relay.get(sid)
        await asyncio.sleep(0.2)
        assert stream.task is not None and not stream.task.done()
        last_id = int(before[-1].id or 0)
        headers = {"Last-Event-ID": str(last_id)}
        async with http.get(f"{gateway.url}/v1/streams/{sid}", headers=headers) as response:
            after = await read_all(response)

    assert stream.status == "complete"
    assert after[-1].event == "done"
    assert text_of(before) + text_of(after) == FULL_TEXT


async def test_stream_is_cancelled_when_nobody_reattaches_within_the_grace_period(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(streams={"resume_grace": 0.5}) as gateway:
        sid, _ = await start_and_drop(http, gateway, slow(count=200, delay=0.05), tokens=2)
        dropped = time.monotonic()
        stream = gateway.relay.get(sid)
        await asyncio.sleep(0.2)
        assert not stream.finished
        await wait_until_finished(stream)
        waited = time.monotonic() - dropped
        headers = {"Last-Event-ID": str(len(stream.log) - 1)}
        async with http.get(f"{gateway.url}/v1/streams/{sid}", headers=headers) as response:
            tail = await read_all(response)

    assert waited >= 0.45
    last = stream.log.events[-1]
    assert isinstance(last, Failed) and last.error.code == "cancelled"
    assert stream.status == "cancelled"
    assert [(e.event, e.json()["code"]) for e in tail] == [("error", "cancelled")]


async def test_unknown_stream_is_404_not_found(http: aiohttp.ClientSession) -> None:
    async with serve() as gateway:
        for method in ("GET", "DELETE"):
            url = f"{gateway.url}/v1/streams/str_nope"
            async with http.request(method, url) as response:
                assert response.status == 404
                assert response.content_type == "application/json"
                error = (await response.json())["error"]
        assert error["code"] == "not_found"
        assert "str_nope" in error["message"]


async def test_bad_last_event_id_is_400(http: aiohttp.ClientSession) -> None:
    async with serve() as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json=body(text="a b c")) as response:
            sid = response.headers["X-Stream-Id"]
            await response.read()
        url = f"{gateway.url}/v1/streams/{sid}"
        for bad in ("abc", "-1", "1.5", "999"):
            async with http.get(url, headers={"Last-Event-ID": bad}) as response:
                assert response.status == 400, bad
                error = (await response.json())["error"]
                assert error["code"] == "invalid_request"
                assert "Last-Event-ID" in error["message"]
        async with http.get(url, params={"last_event_id": "x"}) as response:
            assert response.status == 400


async def test_regression_non_ascii_or_huge_last_event_id_was_a_500(
    http: aiohttp.ClientSession,
) -> None:
    # str.isdigit() accepts "²" and "٣", which int() rejects or misreads, and int() refuses
    # strings past 4300 digits: each was an unhandled ValueError, answered as a 500.
    async with serve() as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json=body(text="a b")) as response:
            sid = response.headers["X-Stream-Id"]
            await response.read()
        for bad in ("²", "٣", "9" * 5000):
            url = f"{gateway.url}/v1/streams/{sid}"
            async with http.get(url, params={"last_event_id": bad}) as response:
                assert response.status == 400
                assert (await response.json())["error"]["code"] == "invalid_request"
