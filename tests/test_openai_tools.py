"""Tools, images, structured output and reasoning through the OpenAI wire, both ways exact.

The official SDK (sync and async, streamed and not) talks to the gateway, which fronts the
fake OpenAI upstream over real sockets: what the client sends must reach the upstream as sent,
and what the upstream streams must reach the client as OpenAI would have streamed it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.gateway import serve
from tests.upstream import through_fake
from tokenrelay.testing import fake_prompt

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = {"id": "call_w1", "name": "get_weather", "arguments": ['{"ci', 'ty": "Par', 'is"}']}
SECOND = {"id": "call_t2", "name": "get_time", "arguments": ['{"zone":"CET"}']}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


def _async_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


def _ask(**script: Any) -> list[Any]:
    return [{"role": "user", "content": fake_prompt(**script)}]


async def test_sync_sdk_streams_a_tool_call_in_fragments_as_openai_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):

        def consume() -> list[Any]:
            with _client(gateway.url) as client:
                stream = client.chat.completions.create(
                    model="up",
                    messages=_ask(tokens=[], tool_calls=[CALL]),
                    tools=[WEATHER],  # type: ignore[list-item]
                    tool_choice="auto",
                    stream=True,
                )
                return list(stream)

        chunks = await asyncio.to_thread(consume)
        sent = fake.requests[0].json
    fragments = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    calls = [call for fragment in fragments if fragment for call in fragment]
    # A reader that fell behind gets the pending fragments of one call as one: at least two.
    assert len(calls) >= 2 and {call.index for call in calls} == {0}
    # id, type and name only in the first fragment; the arguments in the fragments after it.
    assert (calls[0].id, calls[0].type, calls[0].function.name) == (
        "call_w1",
        "function",
        "get_weather",
    )  # type: ignore[union-attr]
    assert all(c.id is None and c.function.name is None for c in calls[1:])  # type: ignore[union-attr]
    assert "".join(c.function.arguments or "" for c in calls) == '{"city": "Paris"}'  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "auto"


async def test_async_sdk_gets_parallel_tool_calls_whole_when_not_streaming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake), _async_client(gateway.url) as client:
        completion = await client.chat.completions.create(
            model="up",
            messages=_ask(tokens=[], tool_calls=[CALL, SECOND]),
            tools=[WEATHER],  # type: ignore[list-item]
            parallel_tool_calls=True,
        )
        sent = fake.requests[0].json
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_w1", "get_weather", '{"city": "Paris"}'),
        ("call_t2", "get_time", '{"zone":"CET"}'),
    ]
    assert sent["parallel_tool_calls"] is True


async def test_a_call_without_arguments_ends_as_an_empty_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bare = {"id": "call_n", "name": "now"}
    async with through_fake(monkeypatch) as (gateway, _), _async_client(gateway.url) as client:
        stream = await client.chat.completions.create(
            model="up", messages=_ask(tokens=[], tool_calls=[bare]), stream=True
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(
            model="up", messages=_ask(tokens=[], tool_calls=[bare])
        )
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert "".join(c.function.arguments or "" for c in calls) == "{}"  # type: ignore[union-attr]
    assert whole.choices[0].message.tool_calls[0].function.arguments == "{}"  # type: ignore[index, union-attr]


async def test_the_tool_result_round_trip_reaches_the_upstream_as_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history: list[Any] = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": '{"temp": 21}'},
    ]
    async with through_fake(monkeypatch) as (gateway, fake), _async_client(gateway.url) as client:
        completion = await client.chat.completions.create(
            model="up",
            messages=history,
            tools=[WEATHER],  # type: ignore[list-item]
            # The fake's script rides in the body here: an unknown field, forwarded unchanged.
            extra_body={"fake": {"tokens": ["It is ", "21°C."]}},
        )
        sent = fake.requests[0].json
    assert completion.choices[0].message.content == "It is 21°C."
    assert sent["messages"] == history
    assert sent["fake"] == {"tokens": ["It is ", "21°C."]}


async def test_an_image_part_reaches_the_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        },
    ]
    async with through_fake(monkeypatch) as (gateway, fake):

        def ask() -> Any:
            with _client(gateway.url) as client:
                return client.chat.completions.create(
                    extra_body={"fake": {"tokens": ["a cat"]}},
                    model="up",
                    messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
                )

        completion = await asyncio.to_thread(ask)
        sent = fake.requests[0].json
    assert completion.choices[0].message.content == "a cat"
    assert sent["messages"] == [{"role": "user", "content": content}]


async def test_json_schema_and_unmodelled_fields_reach_the_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "city",
            "strict": True,
            "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    }
    async with through_fake(monkeypatch) as (gateway, fake), _async_client(gateway.url) as client:
        stream = await client.chat.completions.create(
            model="up",
            messages=_ask(tokens=['{"name"', ': "Paris"}']),
            response_format=response_format,  # type: ignore[arg-type]
            presence_penalty=0.5,
            max_completion_tokens=50,
            reasoning_effort="low",
            stream=True,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        sent = fake.requests[0].json
    assert text == '{"name": "Paris"}'
    assert sent["response_format"] == response_format
    assert (sent["presence_penalty"], sent["max_completion_tokens"]) == (0.5, 50)
    assert sent["reasoning_effort"] == "low" and "max_tokens" not in sent


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_reach_the_client_as_reasoning_content(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    usage = {
        "prompt_tokens": 9,
        "completion_tokens": 7,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    script = {"reasoning": ["Paris is ", "in France."], "reasoning_field": field, "usage": usage}
    async with through_fake(monkeypatch) as (gateway, _), _async_client(gateway.url) as client:
        stream = await client.chat.completions.create(
            model="up",
            messages=_ask(tokens=["Paris."], **script),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(
            model="up", messages=_ask(tokens=["Paris."], **script)
        )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert thought == "Paris is in France."
    assert "".join(d.content or "" for d in deltas) == "Paris."
    final = chunks[-1].usage
    assert final is not None and final.prompt_tokens_details is not None
    assert final.prompt_tokens_details.cached_tokens == 4
    assert final.completion_tokens_details is not None
    assert final.completion_tokens_details.reasoning_tokens == 5
    assert getattr(whole.choices[0].message, "reasoning_content", None) == "Paris is in France."


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"logit_bias": {"42": 1}}, "logit_bias"),
        # The anthropic provider's structured output is a forced tool: not beside other tools.
        (
            {"tools": [WEATHER], "response_format": {"type": "json_object"}},
            "response_format with tools",
        ),
    ],
)
async def test_a_field_the_provider_cannot_honour_is_a_400_before_anything_streams(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], field: str
) -> None:
    monkeypatch.setenv("NO_KEY", "x")
    models = {
        "claude": {
            "provider": "anthropic",
            "base_url": "http://127.0.0.1:9",
            "api_key_env": "NO_KEY",
        }
    }
    body: dict[str, Any] = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    async with serve(models=models) as gateway, _async_client(gateway.url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(**body, stream=True)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field} is not supported by model 'claude'")
