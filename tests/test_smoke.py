from __future__ import annotations

import aiohttp
import uvicorn

from tests.gateway import parse_sse, serve, settings
from tokenrelay.app import create_app


async def test_seed_wire_streams_tokens_then_done(http: aiohttp.ClientSession) -> None:
    async with serve() as gateway:
        body = {"messages": [{"role": "user", "content": "hello"}]}
        async with http.post(f"{gateway.url}/chat/stream", json=body) as response:
            assert response.status == 200
            assert response.headers["x-accel-buffering"] == "no"
            events = [e.json() for e in parse_sse(await response.text())]
    assert "".join(e.get("token", "") for e in events) == "You said: hello"
    assert events[-1] == {"done": True, "finish_reason": "stop"}


def test_asgi_servers_that_look_for_themselves_see_an_asgi3_app() -> None:
    # The app's __call__ hands back a coroutine instead of being a coroutine function; servers
    # run without tokenrelay's own config (uvicorn --factory, hypercorn) must still see ASGI 3.
    config = uvicorn.Config(create_app(settings()), interface="auto")
    config.load()
    assert config.interface == "asgi3"
