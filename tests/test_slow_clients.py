"""Slow and stuck clients never hold the generation back (issue 2, item 7).

The readers here are raw sockets so the test decides exactly when and how much is read. On
loopback the kernel autotunes a connection's send buffer up to megabytes, so a whole stream
would vanish into it without the gateway ever feeling backpressure; ``squeeze`` shrinks the
gateway's side of one connection to what a slow mobile link would hold, which makes the
backpressure show within a short test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.gateway import Gateway, SSEEvent, parse_sse, read_sse, serve
from tokenrelay.relay import Stream

SNDBUF = 4096
RCVBUF = 4096


class RawClient:
    """One HTTP/1.1 request on a socket whose reads the test controls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.raw = bytearray()
        self.headers: dict[str, str] = {}
        self.eof = False

    @classmethod
    async def open(
        cls,
        gateway: Gateway,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
    ) -> RawClient:
        host, port = gateway.url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connecting so the advertised window starts small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        # A small limit makes asyncio stop pulling from the socket while the test is not reading.
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        client = cls(reader, writer)
        await squeeze(gateway, client)
        payload = orjson.dumps(body) if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        writer.write(head.encode() + b"\r\n" + payload)
        await writer.drain()
        return client

    async def read_head(self) -> int:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode().split("\r\n")
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1])

    async def read_some(self, size: int) -> int:
        data = await asyncio.wait_for(self.reader.read(size), 5)
        self.raw += data
        self.eof = self.eof or not data
        return len(data)

    async def read_all(self, timeout: float = 10) -> None:
        """Read until the response ends or the server closes the connection."""
        async with asyncio.timeout(timeout):
            while not self.eof and not dechunk(bytes(self.raw))[1]:
                await self.read_some(65536)

    def events(self) -> list[SSEEvent]:
        return list(parse_sse(dechunk(bytes(self.raw))[0].decode()))

    def close(self) -> None:
        self.writer.transport.abort()


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body so far of a chunked response, and whether its last chunk has arrived."""
    body = bytearray()
    at = 0
    while True:
        line_end = raw.find(b"\r\n", at)
        if line_end < 0:
            return bytes(body), False
        size = int(raw[at:line_end], 16)
        if size == 0:
            return bytes(body), True
        start = line_end + 2
        if len(raw) < start + size + 2:
            body += raw[start:]
            return bytes(body), False
        body += raw[start : start + size]
        at = start + size + 2


def server_side(gateway: Gateway, client: RawClient) -> asyncio.Transport | None:
    """The gateway's transport for ``client``'s connection, while the gateway holds it."""
    ours = client.writer.get_extra_info("sockname")
    for connection in gateway.server.server_state.connections:
        transport: asyncio.Transport | None = getattr(connection, "transport", None)
        if transport is not None and transport.get_extra_info("peername") == ours:
            return transport
    return None


async def squeeze(gateway: Gateway, client: RawClient) -> None:
    """Shrink the gateway's kernel send buffer for this client's connection."""
    await wait_until(lambda: server_side(gateway, client) is not None, 2, step=0.005)
    transport = server_side(gateway, client)
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)


@contextlib.asynccontextmanager
async def raw_clients() -> AsyncIterator[list[RawClient]]:
    clients: list[RawClient] = []
    try:
        yield clients
    finally:
        # Clients that stopped reading would otherwise hold the server's shutdown.
        for client in clients:
            client.close()


def chat(**script: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "go"}], "script": script}


async def start_raw(
    gateway: Gateway, clients: list[RawClient], path: str, body: dict[str, Any]
) -> tuple[RawClient, Stream]:
    """A raw client that started a stream with ``POST path`` and read the response head."""
    client = await RawClient.open(gateway, "POST", path, body)
    clients.append(client)
    assert await client.read_head() == 200
    return client, gateway.relay.streams[client.headers["x-stream-id"]]


async def wait_until(condition: Any, timeout: float, step: float = 0.01) -> float:
    """Seconds it took ``condition()`` to become true; fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        if loop.time() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return loop.time() - started


def tokens_of(events: list[SSEEvent]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "token")


async def test_slow_reader_never_slows_the_generation_or_a_fast_viewer(
    http: aiohttp.ClientSession,
) -> None:
    count, delay = 1500, 0.001
    token = "0123456789" * 20
    async with serve() as gateway, raw_clients() as clients:
        script = chat(tokens=[token], repeat=count, delay=delay)
        slow, stream = await start_raw(gateway, clients, "/v1/streams", script)
        sid = stream.id
        started = time.monotonic()

        fast_events: list[SSEEvent] = []
        fast_done_at = 0.0

        async def follow_fast() -> None:
            nonlocal fast_done_at
            async with http.get(f"{gateway.url}/v1/streams/{sid}") as response:
                async for event in read_sse(response):
                    fast_events.append(event)
            fast_done_at = time.monotonic()

        fast = asyncio.create_task(follow_fast())
        # About 20 KB/s: a tenth of the pace the script produces text at.
        while not stream.log.closed:
            await slow.read_some(1024)
            await asyncio.sleep(0.05)
        generated_in = time.monotonic() - started
        read_when_done = len(slow.raw)
        await asyncio.wait_for(fast, 5)
        await slow.read_all()

    full = token * count
    assert stream.status == "complete"
    # The script sleeps count * delay = 1.5 s. Paced by the slow reader, the generation would
    # take 15 s; it ended before that reader had read half of the output.
    assert generated_in < 6
    assert read_when_done < len(full) / 2
    assert fast_done_at - started < generated_in + 2
    assert tokens_of(fast_events) == full
    assert fast_events[-1].event == "done"
    fast_ids = [int(e.id or 0) for e in fast_events]
    assert fast_ids == sorted(set(fast_ids))
    assert fast_ids[-1] == len(stream.log.events)

    slow_events = slow.events()
    slow_tokens = [e for e in slow_events if e.event == "token"]
    assert tokens_of(slow_events) == full
    assert len(slow_tokens) < count / 2, "a reader behind should get deltas coalesced"
    assert slow_events[-1].event == "done"
    assert slow_events[-1].id == str(len(stream.log.events))
    ids = [int(e.id or 0) for e in slow_events]
    assert ids == sorted(set(ids))


async def test_stuck_viewer_is_dropped_and_the_other_viewer_gets_everything(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await _stuck_viewer_is_dropped(http, caplog)
    # The drop is a warning of the gateway's own, not an error from the server.
    assert [r.levelname for r in caplog.records if "dropped a client" in r.getMessage()] == [
        "WARNING"
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _stuck_viewer_is_dropped(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    count = 1500
    token = "x" * 200
    script = chat(tokens=[token], repeat=count, delay=0.001, first_delay=0.5)
    async with (
        serve(streams={"send_timeout": 0.5}) as gateway,
        raw_clients() as clients,
        server_log_captured(caplog),
    ):
        stuck, stream = await start_raw(gateway, clients, "/v1/streams", script)

        async def follow() -> list[SSEEvent]:
            async with http.get(f"{gateway.url}/v1/streams/{stream.id}") as response:
                return [event async for event in read_sse(response)]

        fast = asyncio.create_task(follow())
        await wait_until(lambda: stream.viewers == 2, 2)
        await wait_until(lambda: stream.viewers == 1, 5)
        assert not stream.finished, "the stuck viewer should be dropped mid-stream"
        events = await asyncio.wait_for(fast, 10)
        await wait_until(lambda: stream.viewers == 0, 1)

        # The server let go of the connection (aborted by the kernel's TCP_USER_TIMEOUT, or
        # closed): once the client finally reads, the response has ended early.
        with contextlib.suppress(ConnectionResetError):
            await stuck.read_all()
        body, complete = dechunk(bytes(stuck.raw))
        assert not complete
        assert b"event: done" not in body
        await wait_until(lambda: server_side(gateway, stuck) is None, 2)

    assert stream.status == "complete"
    assert tokens_of(events) == token * count
    assert events[-1].event == "done"


@contextlib.asynccontextmanager
async def server_log_captured(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """uvicorn's own log in ``caplog`` too (its loggers do not propagate to the root one).

    Entered once the server runs: uvicorn's logging setup drops handlers added before it.
    """
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(caplog.handler)
    try:
        yield
    finally:
        server_log.removeHandler(caplog.handler)


async def test_stuck_sole_viewer_of_a_native_stream_leaves_it_running_for_a_resume() -> None:
    count = 1500
    token = "x" * 200
    script = chat(tokens=[token], repeat=count, delay=0.001)
    async with serve(streams={"send_timeout": 0.5}) as gateway, raw_clients() as clients:
        _, stream = await start_raw(gateway, clients, "/v1/streams", script)
        await wait_until(lambda: stream.viewers == 0, 5)
        assert not stream.finished
        await wait_until(lambda: stream.finished, 10)
    assert stream.status == "complete"
    assert stream.log.text() == token * count


async def test_regression_a_dropped_client_that_never_reads_is_disconnected_not_held() -> None:
    # uvicorn closes a connection gracefully, waiting for a peer that never reads; the
    # listening socket's TCP_USER_TIMEOUT makes the kernel abort it instead.
    script = chat(tokens=["x" * 200], repeat=1500, delay=0.001)
    async with serve(streams={"send_timeout": 0.5}) as gateway, raw_clients() as clients:
        stuck, stream = await start_raw(gateway, clients, "/v1/streams", script)
        await wait_until(lambda: stream.viewers == 0, 5)
        await wait_until(lambda: server_side(gateway, stuck) is None, 5)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/stream"])
async def test_stuck_sole_client_of_a_stateless_wire_cancels_the_generation(path: str) -> None:
    count, delay = 5000, 0.002
    body = chat(tokens=["y" * 200], repeat=count, delay=delay) | {"model": "demo", "stream": True}
    if path == "/chat/stream":
        del body["stream"]
    async with serve(streams={"send_timeout": 0.5}) as gateway, raw_clients() as clients:
        _, stream = await start_raw(gateway, clients, path, body)
        took = await wait_until(lambda: stream.finished, 10)
        # The script alone would run for count * delay = 10 s.
        assert took < count * delay / 2
        assert stream.status == "cancelled"
        assert stream.viewers == 0


async def _peak_memory_with_readers(readers: int, count: int, token: str) -> tuple[int, int]:
    """Peak traced bytes while ``readers`` slow readers follow one stream; and its log length."""
    script = chat(tokens=[token], repeat=count, delay=0.001, first_delay=0.3)
    async with serve() as gateway, raw_clients() as clients:
        _, stream = await start_raw(gateway, clients, "/v1/streams", script)
        for _ in range(readers - 1):
            clients.append(await RawClient.open(gateway, "GET", f"/v1/streams/{stream.id}", None))
        await wait_until(lambda: stream.viewers == readers, 2)

        async def read_slowly(client: RawClient) -> None:
            # What is read is dropped, so the test's own copies stay out of the measurement.
            while await client.reader.read(4096):
                await asyncio.sleep(0.02)

        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            sippers = [asyncio.create_task(read_slowly(client)) for client in clients]
            await wait_until(lambda: stream.finished, 20, step=0.05)
            # Give every reader's next drain a chance to copy whatever it would copy.
            await asyncio.sleep(1)
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        for task in sippers:
            task.cancel()
        # Every reader was still attached and behind while memory was measured.
        assert stream.viewers == readers
        return peak, len(stream.log.events)


async def test_memory_per_stream_is_bounded_by_output_not_by_slow_readers() -> None:
    count = 1000
    token = "z" * 2000
    output = count * len(token)
    one, events_one = await _peak_memory_with_readers(1, count, token)
    twenty, events_twenty = await _peak_memory_with_readers(20, count, token)
    # One log per stream: opened, the deltas, usage, done.
    assert events_one == events_twenty == count + 3
    # A copy of the backlog per reader would cost about the output size per extra reader; each
    # may hold only its socket's share (under 100 KB here).
    per_reader = (twenty - one) / 19
    assert per_reader < output / 4, (one, twenty, output)
