"""Stored conversations keep more than text: tool calls, tool results, reasoning, images.

On SQLite and on PostgreSQL (the ``database_url`` fixture). What a stored conversation holds
is what the next turn sends the model, so the round trips here end at the fake OpenAI
upstream, reading what it received.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.gateway import read_sse, serve
from tests.stored import create, messages, post_turn, settled, stored_message, text_of, turn
from tests.upstream import through_fake

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYAAAAAMA"
    "AWgmWQ0AAAAASUVORK5CYII="
)


async def test_a_stored_tool_call_its_result_and_an_image_go_back_to_the_upstream_next_turn(
    http: aiohttp.ClientSession, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with through_fake(monkeypatch, database_url=database_url) as (gateway, fake):
        cid = await create(http, gateway, model="up", system="Be brief.")
        fake.default_script = {
            "tokens": ["Let me ", "check."],
            "reasoning": ["The user ", "wants weather."],
            "tool_calls": [
                {"id": "call_w1", "name": "get_weather", "arguments": ['{"city":', '"Paris"}']}
            ],
        }
        question = [
            {"type": "text", "text": "Weather where this is?"},
            {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
        ]
        first = await post_turn(http, gateway, cid, {"content": question, "tools": [WEATHER]})
        fake.default_script = {"tokens": ["18 °C in Paris."]}
        answer = [{"type": "tool_result", "tool_call_id": "call_w1", "content": "18C"}]
        second = await post_turn(http, gateway, cid, {"content": answer, "tools": [WEATHER]})
        stored = await messages(http, gateway, cid)
        sent = fake.requests[1].json

    assert first[-1].json() == {"finish_reason": "tool_calls"}
    assert text_of(second) == "18 °C in Paris."
    assert sent["tools"] == [WEATHER]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": question},
        {
            "role": "assistant",
            # OpenAI takes no reasoning back; the text and the call go back as they came.
            "content": [{"type": "text", "text": "Let me check."}],
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "18C"},
    ]
    assert [(m["role"], m["content"], m["parts"]) for m in stored] == [
        ("system", "Be brief.", None),
        ("user", "Weather where this is?", question),
        (
            "assistant",
            "Let me check.",
            [
                {"type": "reasoning", "text": "The user wants weather."},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_call",
                    "id": "call_w1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
            ],
        ),
        ("user", "", [{"type": "tool_result", "tool_call_id": "call_w1", "content": "18C"}]),
        ("assistant", "18 °C in Paris.", None),
    ]


async def test_a_replys_reasoning_keeps_its_signature_and_its_calls_their_arguments(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    script: dict[str, Any] = {
        "reasoning": "Two cities, two calls.",
        "signature": "sig-abc==",
        "redacted": ["RW5jcnlwdGVk"],
        "tool_calls": [
            {"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}, "fragment": 3},
            {"id": "call_2", "name": "now"},
        ],
    }
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        events = await post_turn(http, gateway, cid, turn("Oslo and the time?", **script))
        plain = await post_turn(http, gateway, cid, turn("thanks", text="You are welcome."))
        stored = await messages(http, gateway, cid)
        row = await stored_message(gateway.services.store, stored[-1]["id"])

    assert events[-1].json() == {"finish_reason": "tool_calls"}
    assert text_of(plain) == "You are welcome."
    reply = stored[1]
    assert (reply["content"], reply["status"], reply["finish_reason"]) == (
        "",
        "complete",
        "tool_calls",
    )
    assert reply["parts"] == [
        {"type": "reasoning", "text": "Two cities, two calls.", "signature": "sig-abc=="},
        {"type": "redacted_reasoning", "data": "RW5jcnlwdGVk"},
        {
            "type": "tool_call",
            "id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Oslo"}',
        },
        # A call streamed without arguments has none: an empty JSON object.
        {"type": "tool_call", "id": "call_2", "name": "now", "arguments": "{}"},
    ]
    # A message that is only text stores no parts at all (SQL NULL, not JSON null).
    assert row.parts is None and stored[2]["parts"] is None


async def test_a_cancelled_reply_keeps_its_reasoning_and_text_but_not_a_half_streamed_call(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    call = {"id": "call_1", "name": "search", "arguments": {"q": "x" * 200}, "fragment": 2}
    script = {"reasoning": "Look it up.", "text": "Searching.", "tool_calls": [call], "delay": 0.02}
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        async with http.post(url, json=turn("find x", **script)) as response:
            message_id = response.headers["X-Message-Id"]
            stream_id = response.headers["X-Stream-Id"]
            async for event in read_sse(response):
                if event.event == "tool_call" and "arguments" in event.json():
                    break
            async with http.delete(f"{gateway.url}/v1/streams/{stream_id}") as deleted:
                assert deleted.status == 200
        reply = await settled(gateway.services.store, message_id)
        # The next turn goes out without a call nothing answered (upstreams refuse one).
        after = await post_turn(http, gateway, cid, turn("never mind", echo="history"))

    assert reply.status == "cancelled"
    assert reply.content == "Searching."
    assert reply.parts == [
        {"type": "reasoning", "text": "Look it up."},
        {"type": "text", "text": "Searching."},
    ]
    assert text_of(after) == "user: find x | assistant: Searching. | user: never mind"


async def test_a_turn_part_the_user_cannot_send_is_a_400_naming_it(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url) as gateway:
        cid = await create(http, gateway)
        url = f"{gateway.url}/v1/conversations/{cid}/messages"
        answers = []
        for content in (
            [{"type": "tool_call", "id": "c", "name": "n", "arguments": "{}"}],
            [{"type": "tool_result", "content": "no call id"}],
            [{"type": "text", "text": ""}],
        ):
            async with http.post(url, json={"content": content}) as response:
                answers.append((response.status, (await response.json())["error"]["message"]))
        stored = await messages(http, gateway, cid)

    assert [status for status, _ in answers] == [400, 400, 400]
    assert answers[0][1].startswith("content.0.type")
    assert "tool_call_id" in answers[1][1]
    assert "empty" in answers[2][1]
    assert stored == []
