"""Each client dialect on the other dialect's upstream, with the official SDKs, real sockets.

An OpenAI client on the anthropic provider and an Anthropic client on the openai provider get
tool calls, images, structured output and reasoning mapped faithfully: what the upstream is
sent is what its own API means by the client's request, and what it streams back reaches the
client as its own API would have streamed it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from tests.gateway import Gateway
from tests.upstream import through_fake, through_fake_anthropic
from tokenrelay.testing import fake_prompt
from tokenrelay.testing.fake_anthropic import FakeAnthropic

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather", "parameters": SCHEMA},
}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather", "input_schema": SCHEMA}
PIXEL = "iVBORw0KGgo="


def _ask(**script: Any) -> list[Any]:
    return [{"role": "user", "content": fake_prompt(**script)}]


# -- an OpenAI client on the anthropic provider


@contextlib.asynccontextmanager
async def on_anthropic(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[openai.AsyncOpenAI, FakeAnthropic]]:
    async with (
        through_fake_anthropic(monkeypatch) as (gateway, fake),
        openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="test", max_retries=0) as client,
    ):
        yield client, fake


async def test_openai_client_gets_anthropic_tool_use_as_streamed_tool_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = {"id": "toolu_1", "name": "get_weather", "arguments": ['{"city":', ' "Paris"}']}
    async with on_anthropic(monkeypatch) as (client, fake):
        stream = await client.chat.completions.create(
            model="claude",
            messages=_ask(tokens=[], tool_calls=[call]),
            tools=[OPENAI_TOOL],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        sent = fake.requests[0].json
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert (calls[0].id, calls[0].function.name) == ("toolu_1", "get_weather")  # type: ignore[union-attr]
    assert "".join(c.function.arguments or "" for c in calls) == '{"city": "Paris"}'  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert sent["tools"] == [ANTHROPIC_TOOL]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_openai_tool_result_round_trip_and_image_become_anthropic_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "weather where this is?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": '{"temp": 21}'},
    ]
    async with on_anthropic(monkeypatch) as (client, fake):
        completion = await client.chat.completions.create(
            model="claude",
            messages=history,
            tools=[OPENAI_TOOL],  # type: ignore[list-item]
        )
        sent = fake.requests[0].json
    assert completion.choices[0].message.content
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "weather where this is?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp": 21}'}
            ],
        },
    ]


async def test_openai_json_schema_is_a_forced_anthropic_tool_whose_input_is_the_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = {"id": "toolu_f", "name": "json_response", "arguments": ['{"city"', ': "Paris"}']}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": SCHEMA, "strict": True},
    }
    async with on_anthropic(monkeypatch) as (client, fake):
        completion = await client.chat.completions.create(
            model="claude",
            messages=_ask(tokens=[], tool_calls=[call]),
            response_format=response_format,  # type: ignore[arg-type]
        )
        sent = fake.requests[0].json
    choice = completion.choices[0]
    assert choice.message.content == '{"city": "Paris"}' and choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert sent["tools"][0]["name"] == "json_response"
    assert sent["tools"][0]["input_schema"] == SCHEMA
    assert sent["tool_choice"] == {"type": "tool", "name": "json_response"}


async def test_openai_reasoning_effort_is_a_thinking_budget_and_thinking_is_reasoning_content(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with on_anthropic(monkeypatch) as (client, fake):
        stream = await client.chat.completions.create(
            model="claude",
            messages=_ask(thinking=["Paris", " is in France."], tokens=["Yes."]),
            reasoning_effort="low",
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        sent = fake.requests[0].json
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == "Paris is in France."
    assert "".join(d.content or "" for d in deltas) == "Yes."
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["max_tokens"] > 1024  # Anthropic wants room beyond the budget


async def test_a_reasoning_effort_above_max_tokens_thinks_within_them_or_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with on_anthropic(monkeypatch) as (client, fake):
        await client.chat.completions.create(
            model="claude", messages=_ask(), reasoning_effort="high", max_tokens=3000
        )
        sent = fake.requests[0].json
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="claude", messages=_ask(), reasoning_effort="low", max_tokens=800
            )
        assert len(fake.requests) == 1  # refused here, not by the upstream
    # "high" is 4096 tokens of thinking: Anthropic refuses a budget that is not below
    # max_tokens, so the client's cap wins.
    assert (sent["max_tokens"], sent["thinking"]["budget_tokens"]) == (3000, 2999)
    assert "needs max_tokens above 1024" in caught.value.message


# -- an Anthropic client on the openai provider


def _anthropic_client(gateway: Gateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=10)


async def test_anthropic_client_gets_openai_tool_calls_as_tool_use_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = {"id": "call_1", "name": "get_weather", "arguments": ['{"city":', ' "Paris"}']}
    async with (
        through_fake(monkeypatch) as (gateway, fake),
        _anthropic_client(gateway) as sdk,
        sdk.messages.stream(
            model="up",
            max_tokens=100,
            messages=_ask(tokens=["On it."], tool_calls=[call]),
            tools=[ANTHROPIC_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "any"},
        ) as stream,
    ):
        events = [event async for event in stream]
        final = await stream.get_final_message()
        sent = fake.requests[0].json
    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use")]
    text, tool_use = final.content
    assert text.type == "text" and text.text == "On it."
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert final.stop_reason == "tool_use"
    assert sent["tools"] == [OPENAI_TOOL]
    assert sent["tool_choice"] == "required"


async def test_anthropic_tool_result_and_image_become_openai_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history: list[Any] = [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
                },
                {"type": "text", "text": "weather there?"},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 21}'},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    async with through_fake(monkeypatch) as (gateway, fake), _anthropic_client(gateway) as sdk:
        message = await sdk.messages.create(
            model="up",
            max_tokens=100,
            messages=history,
            tools=[ANTHROPIC_TOOL],  # type: ignore[list-item]
        )
        sent = fake.requests[0].json
    assert message.content[0].type == "text" and message.stop_reason == "end_turn"
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                {"type": "text", "text": "weather there?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]},
    ]


async def test_anthropic_thinking_budget_is_reasoning_effort_and_reasoning_is_thinking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        through_fake(monkeypatch) as (gateway, fake),
        _anthropic_client(gateway) as sdk,
        sdk.messages.stream(
            model="up",
            max_tokens=5000,
            messages=_ask(reasoning=["Paris", " is in France."], tokens=["Yes."]),
            thinking={"type": "enabled", "budget_tokens": 2048},
        ) as stream,
    ):
        final = await stream.get_final_message()
        sent = fake.requests[0].json
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking == "Paris is in France."
    assert text.type == "text" and text.text == "Yes."
    assert sent["reasoning_effort"] == "medium"


async def test_an_anthropic_only_field_is_refused_on_the_openai_provider_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake), _anthropic_client(gateway) as sdk:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await sdk.messages.create(
                model="up", max_tokens=10, messages=_ask(), extra_body={"top_k": 3}
            )
        assert not fake.requests
    assert "top_k is not supported by model 'up'" in str(caught.value)
