"""Background Responses with the official SDK: generated without a connection, polled,
streamed again with ``starting_after`` exactly (no gap, no repeat), from 0 too, and cancelled;
on one instance here, across two instances sharing Redis at the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.gateway import serve
from tests.redis_server import RedisServer, redis_server
from tests.responses import sdk
from tests.scaleout import expected_text, instances, script

TOKENS = 30


def slow(tokens: int = TOKENS, delay: float = 0.03) -> dict[str, Any]:
    return {"script": script(tokens, delay)}


async def first_events(stream: Any, count: int) -> list[Any]:
    """The first ``count`` events of an SDK stream, then the connection is dropped."""
    seen = []
    async for event in stream:
        seen.append(event)
        if len(seen) == count:
            break
    await stream.close()
    return seen


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def until_done(client: openai.AsyncOpenAI, response_id: str) -> Any:
    async with asyncio.timeout(15):
        while True:
            response = await client.responses.retrieve(response_id)
            if response.status not in ("queued", "in_progress"):
                return response
            await asyncio.sleep(0.05)


async def dropped_and_resumed(
    start: openai.AsyncOpenAI, resume: openai.AsyncOpenAI, drop_after: int = 8
) -> tuple[str, list[Any], list[Any]]:
    """A background stream started with ``start``, dropped after ``drop_after`` events and
    resumed with ``resume`` from the last sequence number seen."""
    stream = await start.responses.create(
        model="demo", input="hi", background=True, stream=True, extra_body=slow()
    )
    before = await first_events(stream, drop_after)
    response_id = before[0].response.id
    again = await resume.responses.retrieve(
        response_id, stream=True, starting_after=before[-1].sequence_number
    )
    after = [event async for event in again]
    return response_id, before, after


def assert_exact(before: list[Any], after: list[Any]) -> None:
    numbers = [e.sequence_number for e in before + after]
    assert numbers == list(range(len(numbers)))
    assert text_of(before + after) == expected_text(TOKENS)
    assert after[-1].type == "response.completed"
    assert after[-1].response.output_text == expected_text(TOKENS)


async def test_a_background_response_answers_at_once_and_finishes_without_a_connection() -> None:
    async with serve() as gateway, sdk(gateway.url) as client:
        created = await client.responses.create(
            model="demo", input="hi", background=True, extra_body=slow()
        )
        await asyncio.sleep(0.2)
        polled = await client.responses.retrieve(created.id)
        done = await until_done(client, created.id)
    assert created.status in ("queued", "in_progress") and created.background
    assert polled.status in ("queued", "in_progress")
    # A poll while it generates has the text so far.
    assert 0 < len(polled.output_text) < len(expected_text(TOKENS))
    assert expected_text(TOKENS).startswith(polled.output_text)
    assert done.status == "completed" and done.output_text == expected_text(TOKENS)
    assert done.usage is not None and done.usage.output_tokens == TOKENS


async def test_a_dropped_background_stream_resumes_after_its_last_sequence_number() -> None:
    async with serve() as gateway, sdk(gateway.url) as client:
        response_id, before, after = await dropped_and_resumed(client, client)
        final = await client.responses.retrieve(response_id)
    assert [e.type for e in before[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert before[0].response.status == "queued"
    assert_exact(before, after)
    assert final.status == "completed"


async def test_the_stream_helper_replays_from_zero_and_rebuilds_the_response() -> None:
    async with serve() as gateway, sdk(gateway.url) as client:
        created = await client.responses.create(
            model="demo", input="hi", background=True, extra_body=slow(delay=0.01)
        )
        async with client.responses.stream(response_id=created.id) as whole:
            numbers = [event.sequence_number async for event in whole]
            final = await whole.get_final_response()
        async with client.responses.stream(response_id=created.id, starting_after=5) as rest:
            later = [event.sequence_number async for event in rest]
    assert numbers == list(range(len(numbers)))
    assert later == numbers[6:]
    assert final.id == created.id and final.output_text == expected_text(TOKENS)


async def test_cancel_stops_a_background_response_and_answers_its_final_object() -> None:
    async with serve() as gateway, sdk(gateway.url) as client:
        created = await client.responses.create(
            model="demo", input="hi", background=True, extra_body=slow(tokens=400, delay=0.05)
        )
        watching = await client.responses.retrieve(created.id, stream=True)
        await asyncio.sleep(0.3)
        cancelled = await client.responses.cancel(created.id)
        watched = [event async for event in watching]
        again = await client.responses.cancel(created.id)
        stored = await client.responses.retrieve(created.id)
        generating = [s for s in gateway.relay.streams.values() if not s.finished]
    assert cancelled.status == "cancelled" and 0 < len(cancelled.output_text) < 400 * 5
    assert again.model_dump() == cancelled.model_dump() == stored.model_dump()
    assert watched[-1].type == "response.failed"
    assert watched[-1].response.status == "cancelled"
    assert generating == []


async def test_a_foreground_stream_stops_when_its_client_leaves_a_background_one_goes_on() -> None:
    async with serve() as gateway, sdk(gateway.url) as client:
        foreground = await client.responses.create(
            model="demo", input="hi", stream=True, extra_body=slow(tokens=200, delay=0.05)
        )
        left = (await first_events(foreground, 5))[0].response.id
        background = await client.responses.create(
            model="demo", input="hi", background=True, stream=True, extra_body=slow()
        )
        went_on = (await first_events(background, 5))[0].response.id
        stopped = await until_done(client, left)
        finished = await until_done(client, went_on)
    assert stopped.status == "cancelled" and stopped.error.code == "cancelled"  # type: ignore[union-attr]
    assert finished.status == "completed"


async def test_streaming_again_is_refused_clearly_where_it_cannot_be_done() -> None:
    async with serve(streams={"retention": 0.3}) as gateway, sdk(gateway.url) as client:
        foreground = await client.responses.create(
            model="demo", input="hi", extra_body={"script": {"text": "x"}}
        )
        quick = await client.responses.create(
            model="demo", input="hi", background=True, extra_body={"script": {"text": "a b"}}
        )
        await until_done(client, quick.id)
        with pytest.raises(openai.BadRequestError) as past_the_end:
            await client.responses.retrieve(quick.id, stream=True, starting_after=1000)
        await asyncio.sleep(0.6)
        with pytest.raises(openai.BadRequestError) as expired:
            await client.responses.retrieve(quick.id, stream=True)
        with pytest.raises(openai.BadRequestError) as not_background:
            await client.responses.retrieve(foreground.id, stream=True)
        with pytest.raises(openai.BadRequestError) as not_cancellable:
            await client.responses.cancel(foreground.id)
        kept = await client.responses.retrieve(quick.id)
    assert "starting_after" in past_the_end.value.message
    assert "streams.retention" in expired.value.message
    assert "background" in not_background.value.message
    assert "background" in not_cancellable.value.message
    assert kept.status == "completed" and kept.output_text == "a b"


# -- across instances


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


async def test_a_background_response_started_on_a_is_resumed_polled_and_cancelled_on_b(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> None:
    async with (
        instances(http, tmp_path, redis, 2, database_url=postgres_database) as [a, b],
        sdk(a.url) as on_a,
        sdk(b.url) as on_b,
    ):
        response_id, before, after = await dropped_and_resumed(on_a, on_b)
        async with on_b.responses.stream(response_id=response_id) as whole:
            replayed = await whole.get_final_response()
        polled = await on_b.responses.retrieve(response_id)
        long = await on_a.responses.create(
            model="demo", input="hi", background=True, extra_body=slow(tokens=400, delay=0.05)
        )
        await asyncio.sleep(0.3)
        cancelled = await on_b.responses.cancel(long.id)
        seen_on_a = await until_done(on_a, long.id)
    assert_exact(before, after)
    assert replayed.output_text == polled.output_text == expected_text(TOKENS)
    assert cancelled.status == "cancelled" and seen_on_a.status == "cancelled"


async def test_limits_and_time_limits_hold_as_on_every_wire() -> None:
    async with (
        serve(rate_limits={"requests_per_minute": 2}, timeouts={"first_token": 0.3}) as gateway,
        sdk(gateway.url) as client,
    ):
        late = await client.responses.create(
            model="demo", input="hi", background=True, extra_body={"script": {"first_delay": 5}}
        )
        failed = await until_done(client, late.id)
        await client.responses.create(model="demo", input="hi")
        with pytest.raises(openai.RateLimitError) as refused:
            await client.responses.create(model="demo", input="hi", background=True)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "first_token_timeout"
    assert refused.value.code == "rate_limited"
    assert int(refused.value.response.headers["retry-after"]) >= 1


async def test_responses_of_a_killed_instance_fail_and_a_live_ones_read_as_in_progress(
    http: aiohttp.ClientSession, tmp_path: Path, redis: RedisServer, postgres_database: str
) -> None:
    async with (
        instances(http, tmp_path, redis, 2, database_url=postgres_database) as [a, b],
        sdk(a.url) as on_a,
        sdk(b.url) as on_b,
    ):
        foreground = await on_a.responses.create(
            model="demo", input="hi", stream=True, extra_body=slow(tokens=60)
        )
        started = [await anext(aiter(foreground)) for _ in range(5)]
        response_id = started[0].response.id
        seen_on_b = await on_b.responses.retrieve(response_id)
        rest = [event async for event in foreground]
        done_on_b = await until_done(on_b, response_id)
        background = await on_a.responses.create(
            model="demo", input="hi", background=True, extra_body=slow(tokens=400, delay=0.05)
        )
        cut = await on_a.responses.create(
            model="demo", input="hi", stream=True, extra_body=slow(tokens=400, delay=0.05)
        )
        cut_id = (await anext(aiter(cut))).response.id
        await asyncio.sleep(0.3)
        a.process.kill()
        lost_background = await until_done(on_b, background.id)
        lost_foreground = await until_done(on_b, cut_id)
    assert seen_on_b.status == "in_progress"
    assert rest[-1].type == "response.completed"
    assert done_on_b.status == "completed" and done_on_b.output_text == expected_text(60)
    for lost in (lost_background, lost_foreground):
        assert lost.status == "failed" and lost.error is not None
        assert lost.error.code == "upstream_error" and "stopped" in lost.error.message
    # What the background one had generated is kept (it was in the shared log).
    assert lost_background.output_text and expected_text(400).startswith(
        lost_background.output_text
    )
