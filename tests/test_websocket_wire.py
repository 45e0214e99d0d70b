"""The WebSocket wire: turns with history, cancel, errors that keep the socket, resume."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.gateway import Gateway, serve
from tokenrelay.relay import Stream

WORDS = [f"w{i:02d} " for i in range(20)]


async def send(ws: ClientConnection, message: Any) -> None:
    await ws.send(orjson.dumps(message).decode())


async def receive(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def reply(ws: ClientConnection) -> list[dict[str, Any]]:
    """Messages up to and including the ``done`` or ``error`` that ends a reply."""
    messages = []
    while True:
        message = await receive(ws)
        messages.append(message)
        if message["type"] in ("done", "error"):
            return messages


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"] for m in messages if m["type"] == "token")


def chat(gateway: Gateway) -> Any:
    return connect(gateway.ws_url + "/ws/chat", open_timeout=5, close_timeout=2)


async def wait_until_finished(stream: Stream, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while stream.task is None or not stream.task.done():
            await asyncio.sleep(0.01)


async def test_a_turn_streams_stream_tokens_then_done_each_with_an_id() -> None:
    async with serve() as gateway, chat(gateway) as ws:
        await send(ws, {"content": "hello there", "script": {"delay": 0.01}})
        messages = await reply(ws)

    first = messages[0]
    assert first["type"] == "stream"
    assert first["id"] == 1
    assert first["model"] == "demo"
    assert first["stream_id"].startswith("str_")
    assert text_of(messages) == "You said: hello there"
    assert [m["type"] for m in messages[-2:]] == ["usage", "done"]
    assert messages[-1]["finish_reason"] == "stop"
    ids = [m["id"] for m in messages]
    assert ids == sorted(set(ids))
    assert all(isinstance(i, int) for i in ids)


async def test_second_message_on_a_socket_gets_the_earlier_turns_as_context() -> None:
    async with serve() as gateway, chat(gateway) as ws:
        await send(ws, {"content": "my name is Ada"})
        first = text_of(await reply(ws))
        await send(ws, {"content": "what is my name?", "script": {"echo": "history"}})
        transcript = text_of(await reply(ws))

    assert first == "You said: my name is Ada"
    assert transcript == (
        "user: my name is Ada | assistant: You said: my name is Ada | user: what is my name?"
    )


async def test_history_over_its_cap_drops_the_oldest_turns_first() -> None:
    # Turn one is 10 + 20 characters, turn two 11 + 21: together past 50, each alone under.
    async with serve(limits={"ws_history_max_chars": 50}) as gateway, chat(gateway) as ws:
        for content in ("first-turn", "second-turn"):
            await send(ws, {"content": content})
            assert text_of(await reply(ws)) == f"You said: {content}"
        await send(ws, {"content": "third", "script": {"echo": "history"}})
        transcript = text_of(await reply(ws))

    assert "first-turn" not in transcript
    assert transcript == ("user: second-turn | assistant: You said: second-turn | user: third")


async def test_cancel_mid_reply_sends_a_cancelled_error_and_stops_the_generation() -> None:
    async with serve() as gateway, chat(gateway) as ws:
        script = {"tokens": WORDS, "repeat": 10, "delay": 0.05}
        await send(ws, {"content": "go", "script": script})
        opened = await receive(ws)
        assert opened["type"] == "stream"
        assert (await receive(ws))["type"] == "token"
        await send(ws, {"type": "cancel"})
        rest = await reply(ws)
        stream = gateway.relay.get(opened["stream_id"])
        await wait_until_finished(stream, timeout=1)
        length = len(stream.log)
        await asyncio.sleep(0.2)
        assert len(stream.log) == length
        # The socket goes on: the next turn is answered.
        await send(ws, {"content": "again"})
        after = await reply(ws)

    assert rest[-1]["type"] == "error"
    assert rest[-1]["code"] == "cancelled"
    assert stream.status == "cancelled"
    assert len(text_of(rest)) < len("".join(WORDS)) * 10
    assert after[-1]["type"] == "done"
    assert text_of(after) == "You said: again"


async def test_unknown_model_is_a_not_found_error_and_the_socket_stays_usable() -> None:
    async with serve() as gateway, chat(gateway) as ws:
        await send(ws, {"content": "hi", "model": "no-such-model"})
        error = await receive(ws)
        await send(ws, {"content": "hi"})
        after = await reply(ws)

    assert error["type"] == "error"
    assert error["code"] == "not_found"
    assert "no-such-model" in error["message"]
    assert text_of(after) == "You said: hi"


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ("{not json", "JSON"),
        ("[1, 2]", "JSON object"),
        ('"hello"', "JSON object"),
        ('{"content": 5}', "content"),
        ('{"content": "hi", "max_tokens": "lots"}', "max_tokens"),
        ('{"type": "dance"}', "type"),
        ('{"type": "resume"}', "stream_id"),
        ('{"content": "hi", "surprise": true}', "surprise"),
    ],
)
async def test_invalid_frames_are_invalid_request_errors_and_the_socket_stays_open(
    frame: str, field: str
) -> None:
    async with serve() as gateway, chat(gateway) as ws:
        await ws.send(frame)
        error = await receive(ws)
        await send(ws, {"content": "still here"})
        after = await reply(ws)

    assert error["type"] == "error"
    assert error["code"] == "invalid_request"
    assert field in error["message"]
    assert text_of(after) == "You said: still here"


async def test_frame_over_the_limit_closes_with_1009() -> None:
    async with serve(limits={"ws_max_frame_bytes": 1000}) as gateway, chat(gateway) as ws:
        await send(ws, {"content": "x" * 900})
        assert (await reply(ws))[-1]["type"] == "done"
        await send(ws, {"content": "x" * 2000})
        with pytest.raises(ConnectionClosed) as closed:
            await reply(ws)

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_a_user_past_the_websocket_limit_is_closed_with_1013_until_one_closes() -> None:
    async with serve(limits={"max_websockets_per_user": 2}) as gateway:
        async with chat(gateway) as first, chat(gateway) as second:
            async with chat(gateway) as third:
                with pytest.raises(ConnectionClosed) as closed:
                    await receive(third)
            await send(second, {"content": "still served"})
            served = await reply(second)
            del first
        async with chat(gateway) as again:
            await send(again, {"content": "room again"})
            after = await reply(again)

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert text_of(served) == "You said: still served"
    assert text_of(after) == "You said: room again"


async def test_resume_on_a_new_socket_continues_the_reply_with_no_gap_or_duplicate() -> None:
    async with serve() as gateway:
        async with chat(gateway) as ws:
            await send(ws, {"content": "go", "script": {"tokens": WORDS, "delay": 0.07}})
            before = [await receive(ws) for _ in range(5)]
        assert [m["type"] for m in before] == ["stream"] + ["token"] * 4
        sid = before[0]["stream_id"]
        last_id = before[-1]["id"]
        async with chat(gateway) as ws:
            await send(ws, {"type": "resume", "stream_id": sid, "last_event_id": last_id})
            after = await reply(ws)
        stream = gateway.relay.get(sid)

    assert text_of(before) + text_of(after) == "".join(WORDS)
    assert after[0]["id"] > last_id
    assert after[-1]["type"] == "done"
    assert after[-1]["id"] == len(stream.log)


async def test_resume_of_an_unknown_stream_is_not_found() -> None:
    async with serve() as gateway, chat(gateway) as ws:
        await send(ws, {"type": "resume", "stream_id": "str_nope", "last_event_id": 0})
        error = await receive(ws)

    assert (error["type"], error["code"]) == ("error", "not_found")


async def test_an_auth_message_on_an_authenticated_socket_is_accepted_silently() -> None:
    # Clients that always send {"type": "auth"} first (the browser library) must not get an
    # error when the server needs no key or already has one from the handshake.
    async with serve() as gateway, chat(gateway) as ws:
        await send(ws, {"type": "auth", "token": "anything"})
        await send(ws, {"content": "hi"})
        messages = await reply(ws)
    assert messages[0]["type"] == "stream"
    assert text_of(messages) == "You said: hi"
