"""The load generator: HTTP/1.1 on raw asyncio protocols, so it costs little next to a gateway.

It speaks just enough HTTP to read OpenAI-style SSE streams (chunked, length or close framed)
and records when each content-carrying event arrives; keep-alive connections are reused for
sequential requests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson


@dataclass(slots=True)
class StreamResult:
    """One streamed response as the client saw it; times are :func:`time.monotonic`."""

    sent: float
    status: int = 0
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    """(time, characters of content) for each event that carried content."""
    chars: int = 0
    done: bool = False
    error: str | None = None
    finished: float | None = None

    @property
    def first_token(self) -> float | None:
        return self.arrivals[0][0] if self.arrivals else None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, lost: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = lost
        self._result: StreamResult | None = None
        self._waiter: asyncio.Future[StreamResult] | None = None
        self._head = bytearray()
        self._in_body = False
        self._chunked = False
        self._length: int | None = None
        self._raw = b""
        self._chunk_left = 0
        self._need_crlf = False
        self._sse = b""
        self._error_body = bytearray()
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.reusable = False
        if self._waiter is not None and not self._waiter.done() and self._result is not None:
            if self._in_body and self._length is None and not self._chunked:
                self._complete()
            else:
                self._result.error = self._result.error or f"connection lost: {exc}"
                self._complete()

    def request(self, data: bytes) -> asyncio.Future[StreamResult]:
        assert self.transport is not None
        self._result = StreamResult(sent=time.monotonic())
        self._waiter = asyncio.get_running_loop().create_future()
        self._head.clear()
        self._in_body = False
        self._raw = b""
        self._sse = b""
        self._chunk_left = 0
        self._need_crlf = False
        self._error_body.clear()
        self.reusable = False
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        if self._result is None:
            return
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._head[:end]).decode("latin-1").lower().split("\r\n")
            data = bytes(self._head[end + 4 :])
            status_line = head[0].split(" ")
            self._result.status = int(status_line[1])
            if self._result.status == 100:
                self._head.clear()
                if data:
                    self.data_received(data)
                return
            headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
            self._chunked = "chunked" in headers.get("transfer-encoding", "")
            length = headers.get("content-length")
            self._length = int(length) if length is not None else None
            self.reusable = "close" not in headers.get("connection", "")
            self._in_body = True
            if not data and self._length != 0:
                return
        if self._chunked:
            self._dechunk(data)
        else:
            self._body(data)
            if self._length is not None:
                self._length -= len(data)
                if self._length <= 0:
                    self._complete()

    def _dechunk(self, data: bytes) -> None:
        buf = self._raw + data if self._raw else data
        pos = 0
        size_left = len(buf)
        while pos < size_left:
            if self._chunk_left:
                take = min(self._chunk_left, size_left - pos)
                self._body(buf[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if size_left - pos < 2:
                    break
                pos += 2
                self._need_crlf = False
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buf[pos:line_end].split(b";", 1)[0], 16)
            pos = line_end + 2
            if size == 0:
                # The last chunk; this client never asks for trailers.
                self._raw = b""
                self._complete()
                return
            self._chunk_left = size
        self._raw = buf[pos:]

    def _body(self, data: bytes) -> None:
        result = self._result
        assert result is not None
        if result.status != 200:
            self._error_body += data
            return
        now = time.monotonic()
        self._sse += data
        *events, self._sse = self._sse.split(b"\n\n")
        chars = 0
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].lstrip(b" ")
                if payload == b"[DONE]":
                    result.done = True
                    continue
                chars += _content_chars(orjson.loads(payload), result)
        if chars:
            result.arrivals.append((now, chars))
            result.chars += chars

    def _complete(self) -> None:
        result, waiter = self._result, self._waiter
        self._result = self._waiter = None
        if result is None or waiter is None or waiter.done():
            return
        result.finished = time.monotonic()
        if result.status != 200 and result.error is None:
            result.error = f"HTTP {result.status}: {bytes(self._error_body[:200])!r}"
        waiter.set_result(result)


def _content_chars(chunk: Any, result: StreamResult) -> int:
    if "error" in chunk:
        result.error = f"stream error: {chunk['error']}"
        return 0
    # The native wire (``POST /v1/streams``): token {text}, done {finish_reason}, error.
    if isinstance(chunk.get("text"), str):
        return len(chunk["text"])
    if "finish_reason" in chunk:
        result.done = True
    elif "code" in chunk and "message" in chunk:
        result.error = f"stream error: {chunk['code']}"
    total = 0
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            total += len(content)
    return total


class Client:
    """Streams chat completions from one base URL (``http://host:port``)."""

    def __init__(
        self,
        port: int,
        key: str | None = None,
        *,
        host: str = "127.0.0.1",
        path: str = "/v1/chat/completions",
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self._auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self._idle: list[_Connection] = []

    def _encode(self, body: dict[str, Any]) -> bytes:
        payload = orjson.dumps(body)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"{self._auth}Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()
        _, conn = await loop.create_connection(lambda: _Connection(lost), self.host, self.port)
        return conn

    async def stream(
        self, body: dict[str, Any], timeout: float, *, reuse: bool = False
    ) -> StreamResult:
        """One request, read to its end; ``reuse`` keeps the connection for the next one."""
        conn = self._idle.pop() if reuse and self._idle else None
        if conn is None or conn.transport is None or conn.transport.is_closing():
            conn = await self._connect()
        waiter = conn.request(self._encode(body))
        try:
            async with asyncio.timeout(timeout):
                result = await waiter
        except TimeoutError:
            result = conn._result or StreamResult(sent=time.monotonic())
            result.error = f"timed out after {timeout:.0f}s"
            conn.reusable = False
        except BaseException:
            conn.reusable = False
            raise
        finally:
            if reuse and conn.reusable and conn.transport is not None:
                self._idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()
        return result

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
