"""The Responses wire (``POST /v1/responses``) with the official SDK, over real sockets.

The scripted model drives text, reasoning and tool calls; the fake OpenAI and Anthropic
upstreams show what a Responses request becomes for each dialect. The SDK's own accumulator
(``responses.stream(...).get_final_response()``) must rebuild the response from the events.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from tests.gateway import Gateway, parse_sse, serve
from tests.responses import script, sdk
from tests.upstream import through_fake, through_fake_anthropic
from tokenrelay.testing import fake_prompt

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CALL = {"id": "call_w1", "name": "get_weather", "arguments": {"city": "Paris"}, "fragment": 4}
# The same call as the fake OpenAI upstream scripts it: its argument fragments as sent.
FAKE_CALL = {"id": "call_w1", "name": "get_weather", "arguments": ['{"city":', '"Paris"}']}


@contextlib.asynccontextmanager
async def scripted() -> AsyncIterator[tuple[Gateway, openai.AsyncOpenAI]]:
    async with serve() as gateway, sdk(gateway.url) as client:
        yield gateway, client


async def test_create_not_streamed_answers_the_whole_response_with_usage() -> None:
    async with scripted() as (_, client):
        response = await client.responses.create(
            model="demo",
            input="hi",
            instructions="be brief",
            metadata={"ticket": "T-1"},
            extra_body=script(text="Hello big world"),
        )
    assert response.status == "completed"
    assert response.output_text == "Hello big world"
    assert response.id.startswith("resp_") and response.model == "demo"
    assert response.instructions == "be brief" and response.metadata == {"ticket": "T-1"}
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.usage.total_tokens == response.usage.input_tokens + 3


async def test_streamed_events_come_in_openais_order_numbered_from_zero() -> None:
    async with scripted() as (_, client):
        stream = await client.responses.create(
            model="demo", input="hi", stream=True, extra_body=script(text="one two")
        )
        events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output_text == "one two" and done.usage is not None
    assert events[0].response.status == "in_progress"  # type: ignore[union-attr]


async def test_the_sdks_accumulator_rebuilds_reasoning_text_and_tool_calls() -> None:
    async with (
        scripted() as (_, client),
        client.responses.stream(
            model="demo",
            input="weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
            extra_body=script(
                text="Let me check.",
                reasoning="the user wants weather",
                signature="sig-1",
                tool_calls=[CALL],
            ),
        ) as stream,
    ):
        kind = "response.function_call_arguments.delta"
        deltas = [e.delta async for e in stream if e.type == kind]
        final = await stream.get_final_response()
    assert len(deltas) > 1 and "".join(deltas) == '{"city": "Paris"}'
    reasoning, message, call = final.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == "sig-1"
    assert reasoning.content is not None
    assert reasoning.content[0].text == "the user wants weather"
    assert message.type == "message" and final.output_text == "Let me check."
    assert call.type == "function_call"
    assert (call.call_id, call.name) == ("call_w1", "get_weather")
    assert call.arguments == '{"city": "Paris"}'
    assert final.tools[0].name == "get_weather"  # type: ignore[union-attr]


async def test_a_length_finish_is_incomplete_with_its_reason() -> None:
    async with scripted() as (_, client):
        stream = await client.responses.create(
            model="demo",
            input="hi",
            max_output_tokens=2,
            stream=True,
            extra_body=script(text="a b c d e f"),
        )
        events = [event async for event in stream]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert last.response.output[0].status == "incomplete"  # type: ignore[union-attr]


async def test_a_failure_mid_stream_is_response_failed_with_the_error_code() -> None:
    async with scripted() as (_, client):
        stream = await client.responses.create(
            model="demo",
            input="hi",
            stream=True,
            extra_body=script(text="a b c d", error_after=2, error_code="upstream_timeout"),
        )
        events = [event async for event in stream]
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.status == "failed"  # type: ignore[union-attr]
    assert last.response.error.code == "upstream_timeout"  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_a_failure_before_the_first_token_is_an_http_error_in_openais_shape() -> None:
    async with scripted() as (_, client):
        with pytest.raises(openai.RateLimitError) as caught:
            await client.responses.create(
                model="demo", input="hi", extra_body=script(fail="upstream_rate_limited")
            )
    assert caught.value.code == "upstream_rate_limited"


async def test_function_call_output_round_trip_reaches_an_openai_upstream_as_chat_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake), sdk(gateway.url) as client:
        first = await client.responses.create(
            model="up",
            input=fake_prompt(tokens=[], tool_calls=[FAKE_CALL]),
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            store=False,
        )
        call = first.output[0]
        assert call.type == "function_call"
        second = await client.responses.create(
            model="up",
            input=[
                {"role": "user", "content": "weather in Paris?"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                {"type": "function_call_output", "call_id": call.call_id, "output": "21C"},
            ],
            tools=[WEATHER],  # type: ignore[list-item]
            text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            store=False,
        )
        sent_first, sent_second = fake.requests[0].json, fake.requests[1].json
    assert sent_first["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
    ]
    assert sent_first["tool_choice"] == "required" and sent_first["parallel_tool_calls"] is False
    assert sent_second["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "21C"},
    ]
    assert sent_second["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }
    assert second.status == "completed"


async def test_an_anthropic_upstream_answers_text_and_a_tool_call_as_responses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = {"id": "toolu_1", "name": "get_weather", "arguments": ['{"city":', ' "Paris"}']}
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), sdk(gateway.url) as client:
        async with client.responses.stream(
            model="claude",
            input=fake_prompt(tokens=["Checking", " now."], tool_calls=[call]),
            tools=[WEATHER],  # type: ignore[list-item]
            instructions="You are terse.",
        ) as stream:
            final = await stream.get_final_response()
        sent = fake.requests[0].json
    message, tool = final.output
    assert message.type == "message" and final.output_text == "Checking now."
    assert tool.type == "function_call" and tool.call_id == "toolu_1"
    assert tool.arguments == '{"city": "Paris"}'
    assert sent["system"] in ("You are terse.", [{"type": "text", "text": "You are terse."}])
    assert sent["tools"][0]["name"] == "get_weather"


async def test_unmodelled_fields_and_items_are_refused_by_name(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        url = f"{gateway.url}/v1/responses"
        refused = {}
        for name, body in {
            "conversation": {"model": "demo", "input": "hi", "conversation": "conv_1"},
            "input.0.type": {"model": "demo", "input": [{"type": "web_search_call", "id": "x"}]},
            "include": {"model": "demo", "input": "hi", "include": ["file_search_call.results"]},
            "tools.0.type": {"model": "demo", "input": "hi", "tools": [{"type": "web_search"}]},
            "background": {"model": "demo", "input": "hi", "background": True, "store": False},
        }.items():
            async with http.post(url, json=body) as response:
                refused[name] = (response.status, (await response.json())["error"])
        async with http.post(url, json={"model": "nope", "input": "hi"}) as response:
            missing = (response.status, (await response.json())["error"]["code"])
    for name, (status, error) in refused.items():
        assert status == 400 and error["code"] == "invalid_request", name
        assert name.split(".")[0] in error["message"], (name, error["message"])
    assert missing == (404, "not_found")


async def test_null_fields_are_absent_and_forwarded_fields_reach_an_openai_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake), sdk(gateway.url) as client:
        await client.responses.create(
            model="up",
            input="hi",
            store=False,
            extra_body={"prompt_cache_key": "k1", "conversation": None, "max_tool_calls": None},
        )
        sent = fake.requests[0].json
    assert sent["prompt_cache_key"] == "k1"
    assert "conversation" not in sent and "max_tool_calls" not in sent


async def test_each_sse_frame_is_named_after_its_event_type(http: aiohttp.ClientSession) -> None:
    async with serve() as gateway:
        body = {"model": "demo", "input": "hi", "stream": True, **script(text="a b")}
        async with http.post(f"{gateway.url}/v1/responses", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = list(parse_sse(await response.text()))
    assert events and all(event.event == event.json()["type"] for event in events)


async def test_anthropic_thinking_and_redacted_thinking_go_back_verbatim_as_reasoning_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    thinking = {
        "thinking": ["Let me see."],
        "signature": "sig-A",
        "redacted_thinking": ["EncRypted=="],
        "tokens": ["Ok."],
    }
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), sdk(gateway.url) as client:
        first = await client.responses.create(
            model="claude", input=fake_prompt(**thinking), reasoning={"effort": "medium"}
        )
        await client.responses.create(
            model="claude",
            input=fake_prompt(tokens=["Again."]),
            previous_response_id=first.id,
            reasoning={"effort": "medium"},
        )
        sent_back = fake.requests[-1].json["messages"][1]["content"]
    thought, sealed, message = first.output
    assert thought.type == sealed.type == "reasoning"
    assert thought.content is not None and thought.content[0].text == "Let me see."  # type: ignore[union-attr]
    assert thought.encrypted_content == "sig-A"  # type: ignore[union-attr]
    assert sealed.encrypted_content == "EncRypted==" and not sealed.content  # type: ignore[union-attr]
    assert message.type == "message" and first.output_text == "Ok."
    assert sent_back == [
        {"type": "thinking", "thinking": "Let me see.", "signature": "sig-A"},
        {"type": "redacted_thinking", "data": "EncRypted=="},
        {"type": "text", "text": "Ok."},
    ]
