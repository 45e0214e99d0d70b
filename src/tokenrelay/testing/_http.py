"""A minimal HTTP/1.1 server on a raw :class:`asyncio.Protocol`, for fake upstreams.

Enough HTTP for clients that talk to LLM APIs, and cheap enough to stand in for an upstream in
benchmarks: requests with a ``Content-Length`` body (no chunked request bodies), keep-alive,
pipelined requests answered in order, ``Expect: 100-continue``, and responses framed by
``Content-Length``, chunked transfer coding, or connection close. Write flow control is honoured
(:meth:`Response.drain`), and when a client goes away mid-response the handler is cancelled and
the connection records it (:class:`ConnectionInfo`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, cast

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024

Framing = Literal["length", "chunked", "close"]
_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    529: "Site Overloaded",
}
_ids = itertools.count(1)
logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class ConnectionInfo:
    """What happened to one TCP connection; times are :func:`time.monotonic`."""

    id: int
    peer: str
    opened_at: float
    closed_at: float | None = None
    closed_by: Literal["client", "server"] | None = None
    requests: int = 0
    _closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the connection to close; return whether it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        return self.closed_at is not None


@dataclass(slots=True, eq=False)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class Response:
    """The answer to one request; a handler must end it with :meth:`finish` or :meth:`abort`."""

    def __init__(self, conn: HTTPConnection, keep_alive: bool) -> None:
        self._conn = conn
        self.keep_alive = keep_alive
        self.framing: Framing | None = None
        self.status: int | None = None
        self.finished_at: float | None = None
        self.client_closed_early = False
        """The client closed the connection before this response was finished."""

    @property
    def started(self) -> bool:
        return self.framing is not None

    @property
    def client_gone(self) -> bool:
        return self._conn.info.closed_at is not None

    def start(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        framing: Framing = "chunked",
        content_length: int = 0,
    ) -> None:
        if self.framing is not None:
            raise RuntimeError("response already started")
        self.framing = framing
        self.status = status
        if framing == "close":
            self.keep_alive = False
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if framing == "length":
            lines.append(f"Content-Length: {content_length}")
        elif framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        if not self.keep_alive:
            lines.append("Connection: close")
        self._conn.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def write(self, data: bytes) -> None:
        """Send ``data`` as one transport write (one HTTP chunk when chunked)."""
        if not data:
            return
        if self.framing == "chunked":
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._conn.write(data)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write (transport flow control)."""
        await self._conn.drain()

    def finish(self) -> None:
        """End the body properly: the terminating chunk, or a close for close-framing."""
        if self.finished_at is not None:
            return
        if self.framing == "chunked":
            self._conn.write(b"0\r\n\r\n")
        self.finished_at = time.monotonic()
        if not self.keep_alive:
            self._conn.close()

    def abort(self) -> None:
        """Drop the connection without ending the body, as a crashed upstream would."""
        self.keep_alive = False
        self._conn.close(abort=True)

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.start(status, headers, framing="length", content_length=len(body))
        self.write(body)
        self.finish()


Handler = Callable[[Request, Response, ConnectionInfo], Awaitable[None]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HTTPConnection(asyncio.Protocol):
    def __init__(self, handler: Handler, server: HTTPServer) -> None:
        self._handler = handler
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._response: Response | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._sent_continue = False
        self.info = ConnectionInfo(id=next(_ids), peer="", opened_at=time.monotonic())

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, but behave as one).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.info.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        self._server._opened(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._next_request()

    def eof_received(self) -> bool:
        # A half-closed client cannot be answered usefully: close our side too.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        info = self.info
        info.closed_at = time.monotonic()
        if info.closed_by is None:
            info.closed_by = "client"
        response = self._response
        if response is not None and response.finished_at is None and info.closed_by == "client":
            response.client_closed_early = True
        if self._task is not None:
            self._task.cancel()
        self._writable.set()
        info._closed.set()
        self._server._closed(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- used by Response

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    def close(self, *, abort: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.info.closed_by is None:
            self.info.closed_by = "server"
        if abort:
            transport.abort()
        else:
            transport.close()

    # -- request loop

    def _next_request(self) -> None:
        if self.info.closed_at is not None or (
            self._transport is not None and self._transport.is_closing()
        ):
            return
        try:
            request = self._parse()
        except _BadRequest as exc:
            response = Response(self, keep_alive=False)
            response.send(exc.status, [("Content-Type", "text/plain")], str(exc).encode())
            return
        if request is None:
            return
        self.info.requests += 1
        response = Response(self, request.keep_alive)
        self._response = response
        self._task = asyncio.get_running_loop().create_task(self._serve(request, response))

    async def _serve(self, request: Request, response: Response) -> None:
        try:
            await self._handler(request, response, self.info)
        except asyncio.CancelledError:
            self.close(abort=True)
            raise
        except Exception:
            logger.exception("fake server handler failed for %s %s", request.method, request.target)
            if not response.started:
                response.keep_alive = False
                response.send(500, [("Content-Type", "text/plain")], b"fake server error")
            self.close(abort=True)
            return
        finally:
            self._task = None
        if response.finished_at is None:
            self.close(abort=True)
        elif response.keep_alive:
            self._next_request()

    def _parse(self) -> Request | None:
        buffer = self._buffer
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request-line.
        while buffer[:2] == b"\r\n":
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise _BadRequest(431, "request head too large")
            return None
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(505, "only HTTP/1.0 and HTTP/1.1")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "transfer-encoding" in headers:
            raise _BadRequest(501, "chunked request bodies are not supported")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest(400, "bad Content-Length") from None
        if length < 0:
            raise _BadRequest(400, "bad Content-Length")
        if length > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        start = end + 4
        if len(buffer) - start < length:
            if headers.get("expect", "").lower() == "100-continue" and not self._sent_continue:
                self._sent_continue = True
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        self._sent_continue = False
        tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        return Request(method, target, version, headers, body, keep_alive)


class HTTPServer:
    """Serve ``handler`` on ``host:port`` (0 picks a free port) until :meth:`stop`."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        on_connection: Callable[[ConnectionInfo], None] | None = None,
    ) -> None:
        self._handler = handler
        self.host = host
        self.port = port
        self._on_connection = on_connection
        self._server: asyncio.Server | None = None
        self._live: set[HTTPConnection] = set()

    @property
    def open_connections(self) -> int:
        return len(self._live)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HTTPConnection(self._handler, self),
            self.host,
            self.port,
            # asyncio's default of 100 pending connections drops SYNs when a benchmark opens
            # thousands of streams at once; a hosted API would not.
            backlog=2048,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._live):
            conn.close(abort=True)
        # Let connection_lost run and the cancelled handlers unwind before returning.
        for _ in range(3):
            await asyncio.sleep(0)
        await server.wait_closed()

    def _opened(self, conn: HTTPConnection) -> None:
        self._live.add(conn)
        if self._on_connection is not None:
            self._on_connection(conn.info)

    def _closed(self, conn: HTTPConnection) -> None:
        self._live.discard(conn)
