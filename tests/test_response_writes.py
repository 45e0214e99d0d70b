"""A response's head leaves with its first body when both are ready in one loop turn, and is
never held for a body that comes later.

The first half drives tokenrelay's HTTP protocol (uvicorn's own request cycle under it) with a
transport that records each write; the second is a real gateway on a real socket, where a
stream's head must arrive as soon as the upstream has taken the request, not with its first
token.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from tests.gateway import serve
from tokenrelay.serving.protocol import GatewayHttpProtocol


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


async def _served(
    app: Any, *requests: bytes, transport: _Recording | None = None, settle: float = 0.05
) -> _Recording:
    """``requests`` one after another on one connection, each given time to be answered."""
    config = Config(app, http="httptools", log_level="warning")
    config.load()
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = transport or _Recording()
    protocol.connection_made(transport)
    try:
        for request in requests:
            protocol.data_received(request)
            await asyncio.sleep(settle)
    finally:
        protocol.connection_lost(None)
    return transport


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"ok"}


async def test_a_head_and_a_body_sent_together_leave_in_one_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send(BODY)

    transport = await _served(app, GET)
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nok")


async def test_a_head_whose_body_is_not_ready_leaves_alone_at_the_end_of_the_turn() -> None:
    seen_before_body: list[list[bytes]] = []
    transport = _Recording()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await asyncio.sleep(0.01)
        seen_before_body.append(list(transport.writes))
        await send(BODY)

    await _served(app, GET, transport=transport)

    [before] = seen_before_body
    assert len(before) == 1 and before[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes == [before[0], b"ok"]


async def test_a_response_with_no_body_write_is_written_before_the_connection_closes() -> None:
    """A HEAD request's response is its head alone; with ``Connection: close`` uvicorn closes
    the transport at once, which must not lose the head being held."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b""})

    request = b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    transport = await _served(app, request)
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.closed


async def test_each_response_on_a_keep_alive_connection_is_one_write_of_its_own() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    first, second = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /bb HTTP/1.1\r\nHost: t\r\n\r\n"
    transport = await _served(app, first, second)
    assert len(transport.writes) == 2
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[0].endswith(b"\r\n\r\n/a")
    assert transport.writes[1].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[1].endswith(b"\r\n\r\n/bb")


async def test_a_streams_head_arrives_when_the_upstream_takes_it_not_with_the_first_token() -> None:
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "script": {"first_delay": 1.0, "tokens": ["late"]},
    }
    async with serve() as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = json.dumps(body).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        sent = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        head_after = time.monotonic() - sent
        rest = b""
        async with asyncio.timeout(10):
            while b"[DONE]" not in rest:
                chunk = await reader.read(65536)
                assert chunk, "the stream ended before [DONE]"
                rest += chunk
        token_after = time.monotonic() - sent
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"text/event-stream" in head
    assert b"late" in rest
    # The first token is a second behind; the head is not.
    assert head_after < 0.5 < token_after
