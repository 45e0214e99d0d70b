"""Reasoning and tool calls on the native SSE and WebSocket wires, resume included.

The scripted provider thinks and calls tools here, so these run without any upstream.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.gateway import SSEEvent, serve
from tests.test_native_wire import read_all, start_and_drop, wait_until_finished
from tests.test_websocket_wire import chat, reply, send
from tokenrelay.events import ToolCallDelta
from tokenrelay.relay.reply import collect

SCRIPT: dict[str, Any] = {
    "reasoning": "The user wants the weather and the time.",
    "signature": "sig-abc",
    "text": "Let me check.",
    "tool_calls": [
        {"id": "call_w", "name": "get_weather", "arguments": {"city": "Paris"}, "fragment": 3},
        {"id": "call_n", "name": "now"},
    ],
}


def body(**script: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "script": script}


def calls_of(frames: list[SSEEvent]) -> dict[int, dict[str, Any]]:
    """Each call's start fields and joined arguments, from ``tool_call`` frames."""
    calls: dict[int, dict[str, Any]] = {}
    for frame in frames:
        if frame.event != "tool_call":
            continue
        data = frame.json()
        call = calls.setdefault(data["index"], {"arguments": ""})
        if "name" in data:
            call.update(id=data["id"], name=data["name"])
        call["arguments"] += data.get("arguments", "")
        call["done"] = call.get("done", False) or data.get("done", False)
    return calls


EXPECTED_CALLS = {
    0: {"id": "call_w", "name": "get_weather", "arguments": '{"city": "Paris"}', "done": True},
    1: {"id": "call_n", "name": "now", "arguments": "", "done": True},
}


async def test_native_stream_names_reasoning_and_tool_call_events(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json=body(**SCRIPT)) as response:
            frames = await read_all(response)
    reasoning = [f.json() for f in frames if f.event == "reasoning"]
    assert "".join(r.get("text", "") for r in reasoning) == SCRIPT["reasoning"]
    assert reasoning[-1] == {"signature": "sig-abc"}
    assert "".join(f.json()["text"] for f in frames if f.event == "token") == "Let me check."
    assert calls_of(frames) == EXPECTED_CALLS
    assert frames[-1].event == "done" and frames[-1].json() == {"finish_reason": "tool_calls"}
    usage = next(f.json() for f in frames if f.event == "usage")
    assert usage["reasoning_tokens"] == 8
    ids = [int(f.id or 0) for f in frames]
    assert ids == sorted(set(ids))


async def test_resume_after_a_drop_replays_the_rest_of_the_calls_exactly(
    http: aiohttp.ClientSession,
) -> None:
    slow = {**SCRIPT, "delay": 0.03}
    async with serve() as gateway:
        stream_id, before = await start_and_drop(http, gateway, body(**slow), tokens=2)
        last_id = before[-1].id
        stream = gateway.relay.streams[stream_id]
        await wait_until_finished(stream)
        headers = {"Last-Event-ID": str(last_id)}
        async with http.get(f"{gateway.url}/v1/streams/{stream_id}", headers=headers) as again:
            after = await read_all(again)
        whole = collect(stream.log.events)
    frames = before + after
    assert calls_of(frames) == EXPECTED_CALLS
    assert "".join(f.json()["text"] for f in frames if f.event == "token") == "".join(whole.text)
    fragments = [e for e in stream.log.events if isinstance(e, ToolCallDelta)]
    assert len(fragments) == 6  # the weather call's arguments in pieces of three


async def test_a_slow_reader_gets_one_arguments_frame_per_call(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json=body(**SCRIPT)) as response:
            stream = gateway.relay.streams[response.headers["X-Stream-Id"]]
            await wait_until_finished(stream)
            # Everything is in the log before the first read: one frame per run.
            frames = await read_all(response)
    arguments = [f.json() for f in frames if f.event == "tool_call" and "arguments" in f.json()]
    assert arguments == [{"index": 0, "arguments": '{"city": "Paris"}'}]


async def test_websocket_turn_carries_reasoning_and_tool_calls() -> None:
    async with serve() as gateway, chat(gateway) as ws:
        await send(ws, {"content": "weather?", "script": SCRIPT})
        messages = await reply(ws)
    kinds = [m["type"] for m in messages]
    assert "reasoning" in kinds and "tool_call" in kinds
    starts = [m for m in messages if m["type"] == "tool_call" and "name" in m]
    assert [(m["index"], m["call_id"], m["name"]) for m in starts] == [
        (0, "call_w", "get_weather"),
        (1, "call_n", "now"),
    ]
    arguments = "".join(m.get("arguments", "") for m in messages if m["type"] == "tool_call")
    assert arguments == '{"city": "Paris"}'
    assert messages[-1]["finish_reason"] == "tool_calls"


async def test_redacted_reasoning_is_a_reasoning_event_with_its_data_on_sse_and_websocket(
    http: aiohttp.ClientSession,
) -> None:
    script = {"reasoning": "Hm.", "redacted": ["RW5j", "cnlwdGVk"], "text": "Done."}
    async with serve() as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json=body(**script)) as response:
            frames = await read_all(response)
        async with chat(gateway) as ws:
            await send(ws, {"content": "hi", "script": script})
            messages = await reply(ws)
    sse = [f.json() for f in frames if f.event == "reasoning"]
    socket = [{k: v for k, v in m.items() if k not in ("type", "id")} for m in messages]
    for reasoning in (sse, [m for m in socket if m.keys() & {"text", "redacted"}]):
        # Two redacted blocks stay two: they are opaque, never joined.
        assert reasoning == [{"text": "Hm."}, {"redacted": "RW5j"}, {"redacted": "cnlwdGVk"}]


async def test_the_seed_wire_is_text_only_and_refuses_tools(http: aiohttp.ClientSession) -> None:
    tools = [{"type": "function", "function": {"name": "now"}}]
    async with serve() as gateway:
        request = {**body(), "tools": tools}
        async with http.post(f"{gateway.url}/chat/stream", json=request) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["code"] == "invalid_request" and "text-only" in error["message"]
