"""One HTTP/1.1 connection to an upstream, and the streamed response read from it.

The protocol feeds every received byte straight to ``httptools`` (llhttp, the parser uvicorn
uses) and keeps the body pieces in one short list until the provider takes them, so an open
stream costs a protocol object, a parser and a transport: no reader task, no queues, no per-read
futures unless the provider actually has to wait. A provider that stops taking data pauses the
socket at :data:`HIGH_WATER` bytes, so an upstream can never fill the gateway's memory.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from tokenrelay.client.errors import Disconnected, ProtocolError

HIGH_WATER = 256 * 1024
"""Body bytes held before the socket stops reading (the kernel's buffers then push back)."""
MAX_HEAD = 64 * 1024
"""Response head bytes (status line and headers, finished or not) before the client gives up."""


class Connection(asyncio.Protocol):
    """A keep-alive connection carrying one exchange at a time.

    Its life: :meth:`send` a request, await :meth:`head`, then :meth:`read` body pieces until
    ``b""``. Afterwards :attr:`reusable` says whether the pool may send another request on it.
    """

    __slots__ = (
        "_body",
        "_buffered",
        "_close_framed",
        "_complete",
        "_error",
        "_head_size",
        "_interim",
        "_keep_alive",
        "_paused",
        "_received",
        "_waiter",
        "headers",
        "key",
        "max_head",
        "parser",
        "status",
        "transport",
        "used",
    )

    def __init__(self, key: tuple[str, str, int], max_head: int = MAX_HEAD) -> None:
        self.key = key
        self.max_head = max_head
        """(scheme, host, port): the pool's key for connections that may serve a request."""
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.used = 0
        """Exchanges started on this connection (more than one: it came from the pool)."""
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._new_exchange()

    def _new_exchange(self) -> None:
        """The state of one response, fresh."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self._head_size = 0
        self._interim = False
        self._keep_alive = False
        self._received = False
        self._complete = False
        self._close_framed = False
        self._error: Exception | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self.parser is None:
            self._fail(ProtocolError("the upstream sent data without being asked"))
            return
        if not self.status:
            # Every byte until the head is complete counts, not only finished headers: httptools
            # holds an unfinished header value too, growing it with each chunk.
            self._head_size += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ProtocolError(f"the upstream sent malformed HTTP ({exc})"))
            return
        if not self.status and self._head_size > self.max_head:
            self._fail(ProtocolError("the upstream's response head is too large"))
            return
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport: HTTP/1.1 has no half-closed exchange

    def connection_lost(self, exc: Exception | None) -> None:
        if self.parser is not None and not self._complete:
            if self._close_framed:
                self._complete = True  # the body of a close-framed response ends here
            elif self._error is None:
                where = "mid-response" if self._received else "before answering"
                self._error = Disconnected(f"the upstream closed the connection {where}")
        self._wake()

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        # RFC 9110 §5.3: repeated fields are one comma-separated list.
        self.headers[key] = f"{previous}, {text}" if previous is not None else text

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if status < 200:
            # An interim response (103 Early Hints): the real head follows.
            self._interim = True
            self.headers = {}
            return
        self.status = status
        framed = "content-length" in self.headers or "chunked" in self.headers.get(
            "transfer-encoding", ""
        )
        self._close_framed = not framed and self.status not in (204, 304)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        assert self.parser is not None
        # Read now: llhttp resets its flags once this callback returns.
        self._keep_alive = self.parser.should_keep_alive()
        self._complete = True
        self._wake()

    # -- the exchange, for the pool and the response

    def send(self, data: bytes) -> None:
        """Start an exchange: reset the per-response state and write the request."""
        assert self.transport is not None
        self.used += 1
        self.parser = httptools.HttpResponseParser(self)
        self._new_exchange()
        self.transport.write(data)

    @property
    def sent_in_vain(self) -> bool:
        """The exchange failed before a byte of answer on a reused connection: the classic
        race with an upstream closing an idle keep-alive connection, safe to try again."""
        return self.used > 1 and not self._received and isinstance(self._error, Disconnected)

    async def head(self) -> None:
        """Wait for the status line and headers."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        """Body bytes received since the last call, waiting for some; ``b""`` at the end."""
        while True:
            if self._body:
                return self._take()
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            # As _wait(), inline: a stream spends its life here, and a frame less is memory
            # saved per open stream.
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    @property
    def at_eof(self) -> bool:
        return self._complete and not self._body

    @property
    def reusable(self) -> bool:
        """Whole response read, the upstream keeps the connection open, and it still is."""
        return (
            self.at_eof
            and self._keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def idle(self) -> None:
        """Back in the pool: drop the finished exchange's state."""
        self.parser = None
        self.headers = {}

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _take(self) -> bytes:
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._wake()
        self.close()
