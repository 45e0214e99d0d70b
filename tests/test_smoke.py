from __future__ import annotations

import aiohttp

from tests.gateway import parse_sse, serve


async def test_seed_wire_streams_tokens_then_done(http: aiohttp.ClientSession) -> None:
    async with serve() as gateway:
        body = {"messages": [{"role": "user", "content": "hello"}]}
        async with http.post(f"{gateway.url}/chat/stream", json=body) as response:
            assert response.status == 200
            assert response.headers["x-accel-buffering"] == "no"
            events = [e.json() for e in parse_sse(await response.text())]
    assert "".join(e.get("token", "") for e in events) == "You said: hello"
    assert events[-1] == {"done": True, "finish_reason": "stop"}
