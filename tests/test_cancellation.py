"""A client that leaves takes its upstream request with it, promptly and without leaks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tests.gateway import Gateway
from tests.upstream import asking, through_fake
from tokenrelay.testing import FakeOpenAI

WIRES = ["/v1/chat/completions", "/chat/stream"]


async def open_stream(
    gateway: Gateway, path: str, body: dict[str, Any]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = orjson.dumps({**body, "stream": True})
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    return reader, writer


async def hang_up(writer: asyncio.StreamWriter) -> float:
    writer.close()
    await writer.wait_closed()
    return time.monotonic()


async def upstream_closed_after(fake: FakeOpenAI, hung_up_at: float) -> float:
    request = fake.requests[-1]
    assert await request.wait_closed(5), "the upstream request was never closed"
    assert request.client_closed_early
    assert request.closed_at is not None
    return request.closed_at - hung_up_at


@pytest.mark.parametrize("path", WIRES)
async def test_disconnect_mid_stream_closes_the_upstream_within_a_second(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):
        body = asking(tokens=["tick "], repeat=200, delay=0.05)
        reader, writer = await open_stream(gateway, path, body)
        await reader.readuntil(b"tick")
        delay = await upstream_closed_after(fake, await hang_up(writer))
    assert delay < 1.0


@pytest.mark.parametrize("path", WIRES)
async def test_disconnect_cancels_upstream_before_first_token(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):
        reader, writer = await open_stream(gateway, path, asking(first_delay=30))
        await reader.readuntil(b"\r\n\r\n")  # the upstream answered 200; no token yet
        delay = await upstream_closed_after(fake, await hang_up(writer))
    assert delay < 1.0


async def test_disconnect_before_the_upstream_answers_closes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):
        _, writer = await open_stream(gateway, WIRES[0], asking(headers_delay=30))
        while not fake.requests:
            await asyncio.sleep(0.01)
        delay = await upstream_closed_after(fake, await hang_up(writer))
    assert delay < 1.0


async def test_no_task_stream_or_connection_is_left_after_disconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with through_fake(monkeypatch) as (gateway, fake):
        # Warm up, so pooled connections and lazily created tasks exist in the baseline.
        reader, writer = await open_stream(gateway, WIRES[0], asking())
        await reader.readuntil(b"[DONE]")
        await hang_up(writer)
        await asyncio.sleep(0.2)
        tasks_before = len(asyncio.all_tasks())
        open_before = fake.open_connections

        for round_ in range(10):
            path = WIRES[round_ % 2]
            script = asking(first_delay=30) if round_ % 3 == 0 else asking(delay=0.05, repeat=50)
            reader, writer = await open_stream(gateway, path, script)
            await reader.readuntil(b"\r\n\r\n")
            await hang_up(writer)
        await asyncio.sleep(0.5)

        assert gateway.relay.streams == {}
        assert len(asyncio.all_tasks()) <= tasks_before
        assert fake.open_connections <= open_before
        assert all(request.closed_at is not None for request in fake.requests[1:])
