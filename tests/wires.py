"""One table of wires for tests that stream a reply and want to know how it ended.

Each reader sends ``body`` (``model``, ``messages``, options) on its wire with the test's own
client, calls ``on_token`` after each piece of text (a test may kill, cancel or stall
something there), and returns the text and how the stream ended: ``code`` None for done,
else the error's code and message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import websockets

from tests.gateway import Gateway, read_sse

OnToken = Callable[[], Awaitable[None]]
Body = dict[str, Any]


@dataclass
class Outcome:
    text: str
    code: str | None  # None: the stream ended with done
    message: str = ""


async def nothing() -> None:
    return None


async def native(
    http: aiohttp.ClientSession,
    gateway: Gateway,
    body: Body,
    on_token: OnToken = nothing,
    url: str | None = None,
) -> Outcome:
    """``POST /v1/streams``, or a conversation's messages ``url`` (the same events)."""
    text = ""
    async with http.post(url or f"{gateway.url}/v1/streams", json=body) as response:
        assert response.status == 200, await response.text()
        async for event in read_sse(response):
            if event.event == "token":
                text += event.json()["text"]
                await on_token()
            elif event.event == "done":
                return Outcome(text, None)
            elif event.event == "error":
                return Outcome(text, event.json()["code"], event.json()["message"])
    raise AssertionError("the stream ended without done or error")


async def openai_chat(
    http: aiohttp.ClientSession, gateway: Gateway, body: Body, on_token: OnToken = nothing
) -> Outcome:
    text = ""
    url = f"{gateway.url}/v1/chat/completions"
    async with http.post(url, json=body | {"stream": True}) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if "error" in chunk:
                return Outcome(text, chunk["error"]["code"], chunk["error"]["message"])
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    text += choice["delta"]["content"]
                    await on_token()
                if choice.get("finish_reason"):
                    return Outcome(text, None)
    raise AssertionError("the stream ended without a finish_reason or an error")


async def seed(
    http: aiohttp.ClientSession, gateway: Gateway, body: Body, on_token: OnToken = nothing
) -> Outcome:
    text = ""
    async with http.post(f"{gateway.url}/chat/stream", json=body) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = orjson.loads(line[6:])
            if "token" in data:
                text += data["token"]
                await on_token()
            elif "error" in data:
                return Outcome(text, data["code"], data["error"])
            elif data.get("done"):
                return Outcome(text, None)
    raise AssertionError("the stream ended without done or error")


async def websocket(
    http: aiohttp.ClientSession, gateway: Gateway, body: Body, on_token: OnToken = nothing
) -> Outcome:
    """``/ws/chat``: the body's last message as the frame's content, its options beside."""
    text = ""
    frame = {k: v for k, v in body.items() if k != "messages"}
    frame["content"] = body["messages"][-1]["content"]
    async with websockets.connect(f"{gateway.ws_url}/ws/chat") as socket:
        await socket.send(orjson.dumps(frame).decode())
        while True:
            reply = orjson.loads(await socket.recv())
            if reply["type"] == "token":
                text += reply["content"]
                await on_token()
            elif reply["type"] == "done":
                return Outcome(text, None)
            elif reply["type"] == "error":
                return Outcome(text, reply["code"], reply["message"])


WIRES = [native, openai_chat, seed, websocket]
