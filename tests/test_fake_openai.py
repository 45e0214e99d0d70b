"""The fake upstream speaks the wire real clients read, in-process and as a subprocess."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from tokenrelay.testing import FakeOpenAI, fake_prompt


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_official_sdk_streams_from_the_fake(fake: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-fake", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": fake_prompt(tokens=["a", "é", "👋"])}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "aé👋"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert fake.requests[0].headers["authorization"] == "Bearer sk-fake"


async def test_official_sdk_reads_fake_errors(fake: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-fake", max_retries=0)
    async with client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": fake_prompt(status=429)}],
            )
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": fake_prompt(tokens=["x", "y"])}]
        )
    assert reply.choices[0].message.content == "xy"


async def test_unknown_script_key_is_a_400_naming_it(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "messages": [], "stream": True, "fake": {"tokenz": ["a"]}}
    async with http.post(f"{fake.base_url}/chat/completions", json=body) as response:
        assert response.status == 400
        assert "tokenz" in (await response.json())["error"]["message"]


async def test_pipelined_keepalive_requests_are_answered_in_order(fake: FakeOpenAI) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(request * 3)
    async with asyncio.timeout(5):
        for _ in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert b"fake-model" in await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    assert len(fake.connections) == 1 and fake.connections[0].requests == 3
    assert await fake.connections[0].wait_closed(1.0)
    assert fake.connections[0].closed_by == "client"


async def test_runs_as_a_separate_process(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokenrelay.testing.fake_openai",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("fake-openai listening on http://127.0.0.1:")
        url = line.split(" on ")[1].strip()
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.post(f"{url}/v1/chat/completions", json=body) as response:
            assert response.status == 200
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0


async def test_hang_sends_headers_then_waits_for_the_client_to_leave(
    fake: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "messages": [], "stream": True, "fake": {"hang": True}}
    async with asyncio.timeout(5):
        response = await http.post(f"{fake.base_url}/chat/completions", json=body)
        assert response.status == 200
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await response.content.readany()
        response.close()
        assert await fake.requests[0].wait_closed(1.0)
    assert fake.requests[0].client_closed_early
    assert not fake.requests[0].finished


async def test_raw_chunks_are_sent_verbatim(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    chunks = ["data: caf\xc3", {"base64": "qQ0KDQo="}]  # "café\r\n\r\n" cut inside the é
    body = {"model": "m", "messages": [], "stream": True, "fake": {"chunks": chunks}}
    async with http.post(f"{fake.base_url}/chat/completions", json=body) as response:
        assert await response.read() == "data: café\r\n\r\n".encode()
    assert fake.requests[0].finished and not fake.requests[0].client_closed_early
