"""Tools, thinking, images and prompt caching through ``/v1/messages``, both ways exact.

The official ``anthropic`` SDK talks to the gateway, which fronts the fake Anthropic upstream
over real sockets: what the client sends must reach the upstream as sent, and what the upstream
streams must reach the client as Anthropic streams it.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.gateway import Gateway
from tests.upstream import through_fake_anthropic
from tokenrelay.testing.fake_anthropic import fake_prompt

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
CALL = {"id": "toolu_w1", "name": "get_weather", "arguments": ['{"ci', 'ty": "Par', 'is"}']}
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def _client(gateway: Gateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="client-key", max_retries=0, timeout=10
    )


def _ask(**script: Any) -> list[Any]:
    return [{"role": "user", "content": fake_prompt(**script)}]


async def test_sdk_streams_a_tool_use_block_and_the_tool_result_goes_back_as_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), _client(gateway) as sdk:
        async with sdk.messages.stream(
            model="claude",
            max_tokens=200,
            messages=_ask(tokens=["Let me check."], tool_calls=[CALL]),
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "auto"},
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
        history: list[Any] = [
            *_ask(tokens=["x"]),
            {"role": "assistant", "content": [block.model_dump() for block in final.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_w1", "content": '{"temp": 21}'},
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
        ]
        answer = await sdk.messages.create(
            model="claude",
            max_tokens=200,
            messages=history,
            tools=[WEATHER],  # type: ignore[list-item]
            extra_body={"fake": {"tokens": ["Sunny", "."]}},
        )
        first, second = (recorded.json for recorded in fake.requests)

    starts = [e for e in events if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type) for e in starts] == [(0, "text"), (1, "tool_use")]
    fragments = [e.delta for e in events if e.type == "content_block_delta" and e.index == 1]
    # Fragments that arrive together may be coalesced into one: never glued across calls.
    assert {f.type for f in fragments} == {"input_json_delta"}
    assert "".join(f.partial_json for f in fragments) == '{"city": "Paris"}'  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    text, call = final.content
    assert text.type == "text" and text.text == "Let me check."
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("toolu_w1", "get_weather", {"city": "Paris"})
    assert first["tools"] == [WEATHER] and first["tool_choice"] == {"type": "auto"}

    assert answer.content[0].text == "Sunny."  # type: ignore[union-attr]
    # Turns as sent: the tool_use block back on the assistant turn, the result first in the user's.
    assert second["messages"][1]["content"][-1] == {
        "type": "tool_use",
        "id": "toolu_w1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert second["messages"][2] == history[2]
    assert second["fake"] == {"tokens": ["Sunny", "."]}  # an unmodelled field, forwarded


async def test_thinking_streams_before_the_text_then_its_signature_goes_back_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = {"thinking": ["Paris is", " in France."], "signature": "sig-abc", "tokens": ["Yes."]}
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), _client(gateway) as sdk:
        async with sdk.messages.stream(
            model="claude",
            max_tokens=3000,
            messages=_ask(**script),
            thinking={"type": "enabled", "budget_tokens": 2048},
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
        assistant = [block.model_dump() for block in final.content]
        await sdk.messages.create(
            model="claude",
            max_tokens=3000,
            messages=[*_ask(**script), {"role": "assistant", "content": assistant}, *_ask()],
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
        first, second = (recorded.json for recorded in fake.requests)

    deltas = [(e.index, e.delta.type) for e in events if e.type == "content_block_delta"]
    # (Thinking that arrives together may be coalesced into one delta.)
    assert list(dict.fromkeys(deltas)) == [
        (0, "thinking_delta"),
        (0, "signature_delta"),
        (1, "text_delta"),
    ]
    thinking, text = final.content
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == ("Paris is in France.", "sig-abc")
    assert text.type == "text" and text.text == "Yes."
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert second["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "Paris is in France.",
        "signature": "sig-abc",
    }


async def test_image_blocks_base64_and_url_reach_the_upstream_as_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "text", "text": "What are these?"},
    ]
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), _client(gateway) as sdk:
        message = await sdk.messages.create(
            model="claude", max_tokens=100, messages=[{"role": "user", "content": blocks}]
        )
        [sent] = fake.requests
    assert message.content[0].type == "text"
    assert sent.json["messages"] == [{"role": "user", "content": blocks}]


async def test_cache_control_and_unmodelled_fields_are_forwarded_and_cache_usage_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = {"type": "ephemeral"}
    system = [
        {"type": "text", "text": "A long manual.", "cache_control": cache},
        {"type": "text", "text": "Be brief."},
    ]
    usage = {"input_tokens": 5, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 7}
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), _client(gateway) as sdk:
        async with sdk.messages.stream(
            model="claude",
            max_tokens=100,
            system=system,  # type: ignore[arg-type]
            messages=_ask(usage=usage),
            tools=[{**WEATHER, "cache_control": cache}],  # type: ignore[list-item]
            extra_body={"top_k": 5},
        ) as stream:
            final = await stream.get_final_message()
        [sent] = fake.requests
    assert sent.json["system"] == system
    assert sent.json["tools"][0]["cache_control"] == cache
    assert sent.json["top_k"] == 5
    assert final.usage.input_tokens == 5
    assert final.usage.cache_read_input_tokens == 90
    assert final.usage.cache_creation_input_tokens == 7


async def test_stream_false_answers_thinking_text_and_tool_use_blocks_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = {"thinking": ["Hmm."], "tokens": ["Checking."], "tool_calls": [CALL]}
    async with through_fake_anthropic(monkeypatch) as (gateway, _), _client(gateway) as sdk:
        message = await sdk.messages.create(
            model="claude",
            max_tokens=3000,
            messages=_ask(**script),
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].signature == "fake-signature"  # type: ignore[union-attr]
    assert message.content[2].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


async def test_a_block_type_the_wire_does_not_model_is_a_400_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = {"type": "document", "source": {"type": "text", "data": "x", "media_type": "t"}}
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), _client(gateway) as sdk:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await sdk.messages.create(
                model="claude",
                max_tokens=10,
                messages=[{"role": "user", "content": [document]}],  # type: ignore[list-item]
            )
        assert not fake.requests
    assert "'document' is not supported" in str(caught.value)


async def test_redacted_thinking_reaches_the_sdk_whole_and_goes_back_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = {"thinking": ["Let me see."], "redacted_thinking": ["EncRypted=="], "tokens": ["Ok."]}
    async with through_fake_anthropic(monkeypatch) as (gateway, fake), _client(gateway) as sdk:
        async with sdk.messages.stream(
            model="claude",
            max_tokens=3000,
            messages=_ask(**script),
            thinking={"type": "enabled", "budget_tokens": 2048},
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
        collected = await sdk.messages.create(
            model="claude", max_tokens=3000, messages=_ask(**script)
        )
        assistant = [block.model_dump() for block in final.content]
        await sdk.messages.create(
            model="claude",
            max_tokens=3000,
            messages=[*_ask(**script), {"role": "assistant", "content": assistant}, *_ask()],
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
        sent_back = fake.requests[-1].json["messages"][1]["content"]

    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "redacted_thinking"), (2, "text")]
    for message in (final, collected):
        assert [block.type for block in message.content] == [
            "thinking",
            "redacted_thinking",
            "text",
        ]
        assert message.content[1].data == "EncRypted=="  # type: ignore[union-attr]
    assert sent_back[1] == {"type": "redacted_thinking", "data": "EncRypted=="}
