"""SSE responses tell proxies not to buffer and keep idle connections alive with comments."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.gateway import serve

PING = b": ping\n\n"
# The three SSE wires, and what each needs besides messages to stream.
WIRES = [
    pytest.param("/v1/chat/completions", {"stream": True}, id="openai"),
    pytest.param("/v1/streams", {}, id="native"),
    pytest.param("/chat/stream", {}, id="seed"),
]


def body(extra: dict[str, Any], **script: Any) -> dict[str, Any]:
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": "hi"}],
        "script": script,
        **extra,
    }


async def raw_chunks(response: aiohttp.ClientResponse) -> bytes:
    """The body exactly as written, comments and all."""
    data = bytearray()
    async for chunk in response.content.iter_any():
        data += chunk
    return bytes(data)


@pytest.mark.parametrize(("path", "extra"), WIRES)
async def test_sse_responses_carry_no_cache_and_no_buffering_headers(
    http: aiohttp.ClientSession, path: str, extra: dict[str, Any]
) -> None:
    async with serve() as gateway:
        async with http.post(gateway.url + path, json=body(extra, text="a b")) as response:
            assert response.status == 200
            await response.read()
            headers = response.headers

    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"


async def test_resumed_native_stream_carries_the_same_headers(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        async with http.post(f"{gateway.url}/v1/streams", json=body({}, text="a")) as response:
            sid = response.headers["X-Stream-Id"]
            await response.read()
        async with http.get(f"{gateway.url}/v1/streams/{sid}") as response:
            await response.read()
            headers = response.headers

    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"


@pytest.mark.parametrize(("path", "extra"), WIRES)
@pytest.mark.parametrize(
    "script",
    [
        pytest.param({"tokens": ["late"], "first_delay": 1.0}, id="before-first-token"),
        pytest.param({"tokens": ["a", "b"], "delay": 1.0}, id="between-tokens"),
    ],
)
async def test_ping_comments_arrive_while_the_stream_is_idle(
    http: aiohttp.ClientSession, path: str, extra: dict[str, Any], script: dict[str, Any]
) -> None:
    async with serve(streams={"ping_interval": 0.2}) as gateway:
        async with http.post(gateway.url + path, json=body(extra, **script)) as response:
            raw = await raw_chunks(response)

    # One idle second at a 0.2 s interval: about five pings; two is a generous floor.
    assert raw.count(PING) >= 2
    assert raw.index(PING) < raw.index(b"late" if "first_delay" in script else b'"b"')


@pytest.mark.parametrize(("path", "extra"), WIRES)
async def test_no_pings_while_tokens_flow_faster_than_the_interval(
    http: aiohttp.ClientSession, path: str, extra: dict[str, Any]
) -> None:
    # Forty tokens 20 ms apart take 0.8 s: a ping timer that ignored traffic would fire twice.
    tokens = [f"t{i} " for i in range(40)]
    async with serve(streams={"ping_interval": 0.3}) as gateway:
        request = body(extra, tokens=tokens, delay=0.02)
        async with http.post(gateway.url + path, json=request) as response:
            raw = await raw_chunks(response)

    assert b"t39" in raw
    assert PING not in raw
