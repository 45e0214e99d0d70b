"""What one connection may do before its request reaches the app: the ``[server]`` limits,
against raw sockets that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from tests.gateway import Gateway, serve

HEAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"


@contextlib.asynccontextmanager
async def connection(
    gateway: Gateway,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    port = int(gateway.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            return await reader.read(-1)
    return b""


async def test_an_unfinished_header_past_the_limit_is_a_431_before_it_ends() -> None:
    async with serve(server={"max_header_bytes": 8192}) as gateway:
        async with connection(gateway) as (reader, writer):
            # Sending stops at the answer's first bytes: the server goes on reading (and
            # dropping) for a second before it closes, so that the client gets its 431.
            reading = asyncio.create_task(reader.readexactly(len(b"HTTP/1.1 431 ")))
            writer.write(HEAD + b"X-Big: ")
            sent = 0
            with contextlib.suppress(ConnectionError):
                while not reading.done() and sent < 4 * 1024 * 1024:
                    writer.write(b"a" * 16384)
                    await writer.drain()
                    sent += 16384
                    await asyncio.sleep(0.002)
            refused = await reading + await answer(reader)
        async with connection(gateway) as (reader, writer):
            writer.write(HEAD + b"X-Fine: " + b"a" * 4000 + b"\r\nConnection: close\r\n\r\n")
            fine = await answer(reader)

    assert refused.startswith(b"HTTP/1.1 431 ")
    assert sent < 1024 * 1024
    assert fine.startswith(b"HTTP/1.1 200 ")


async def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() -> None:
    async with serve(server={"idle_timeout": 0.3}) as gateway:
        async with connection(gateway) as (reader, _):
            started = time.monotonic()
            closed = await answer(reader)
            waited = time.monotonic() - started

    assert closed == b""
    assert 0.2 < waited < 2


async def test_a_head_sent_a_byte_at_a_time_is_a_408_at_the_header_timeout() -> None:
    async with serve(server={"header_timeout": 0.5, "idle_timeout": 5}) as gateway:
        async with connection(gateway) as (reader, writer):
            started = time.monotonic()
            reading = asyncio.create_task(answer(reader))
            with contextlib.suppress(ConnectionError):
                for byte in HEAD + b"X-Slow: " + b"a" * 100:
                    if reading.done():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)
            timed_out = await reading
            waited = time.monotonic() - started

    assert timed_out.startswith(b"HTTP/1.1 408 ")
    assert waited < 2


async def test_a_body_that_stops_arriving_is_a_408_at_the_body_timeout() -> None:
    async with serve(server={"body_timeout": 0.5}) as gateway:
        async with connection(gateway) as (reader, writer):
            writer.write(
                b"POST /v1/streams HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"messages": '
            )
            started = time.monotonic()
            timed_out = await answer(reader)
            waited = time.monotonic() - started

    assert timed_out.startswith(b"HTTP/1.1 408 ")
    assert waited < 2


async def test_connections_past_the_cap_get_a_503_and_the_rest_are_served() -> None:
    async with serve(server={"max_connections": 3, "idle_timeout": 5}) as gateway:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(3):
                await held.enter_async_context(connection(gateway))
            await asyncio.sleep(0.1)
            async with connection(gateway) as (reader, writer):
                writer.write(HEAD + b"\r\n")
                refused = await answer(reader)
        await asyncio.sleep(0.1)
        async with connection(gateway) as (reader, writer):
            writer.write(HEAD + b"Connection: close\r\n\r\n")
            served = await answer(reader)

    assert refused.startswith(b"HTTP/1.1 503 ")
    assert served.startswith(b"HTTP/1.1 200 ")
