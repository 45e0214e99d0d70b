"""ASGI responses that follow a stream's log: disconnects, pings, send timeouts, errors.

A response subscribes to a :class:`~tokenrelay.relay.Stream`: it counts as a viewer while it
runs, so when the last viewer of a stateless stream leaves, the generation is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from tokenrelay import errors
from tokenrelay.config import StreamSettings
from tokenrelay.events import Event, Failed
from tokenrelay.http.errors import error_response
from tokenrelay.limits import headers as rate_limit
from tokenrelay.relay.deadline import Deadline
from tokenrelay.relay.stream import Stream

logger = logging.getLogger("tokenrelay.wires")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # Proxies and browsers must pass each event on as it comes.
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
PING = b": ping\n\n"
# A slow reader's socket buffer holds at most about this much text beyond the transport's own.
MAX_WRITE_CHARS = 16 * 1024
# Set in a response's task when it lets go of a client that stopped reading. The response is
# left unfinished on purpose, which uvicorn reports at ERROR once the task returns; the server
# filters that one report out (tokenrelay.serving.server.QuietDroppedClients), as this module
# already logged the drop.
dropped_client: ContextVar[bool] = ContextVar("tokenrelay_dropped_client", default=False)
# An ASGI extension of tokenrelay's server (serving.protocol): ``watch(callback)`` has the
# server call ``callback()`` once the client is gone, and returns the function that ends the
# watch. A response that streams for minutes then needs no task waiting on ``receive()``.
ON_DISCONNECT = "tokenrelay.on_disconnect"


class Encoder(Protocol):
    def encode(self, events: list[Event], first_id: int) -> bytes:
        """Bytes for one write carrying ``events`` (event ``first_id`` first)."""


class WatchDisconnect:
    """Cancel the current task when the client disconnects; swallow that cancellation.

    The request body must already have been read, so the next ASGI message is the disconnect.
    Under tokenrelay's server the server says so itself (:data:`ON_DISCONNECT`); elsewhere a
    task waits on ``receive()``.
    """

    __slots__ = ("_listener", "_receive", "_task", "_unwatch", "_watch", "disconnected")

    def __init__(self, receive: Receive, scope: Scope) -> None:
        self._receive = receive
        self._watch = scope.get("extensions", {}).get(ON_DISCONNECT)
        self.disconnected = False
        self._task: asyncio.Task[Any] | None = None
        self._listener: asyncio.Future[Message] | None = None
        self._unwatch: Callable[[], None] | None = None

    async def __aenter__(self) -> WatchDisconnect:
        self._task = asyncio.current_task()
        if self._watch is not None:
            self._unwatch = self._watch(self._gone)
        else:
            self._listen()
        return self

    def _gone(self) -> None:
        self.disconnected = True
        if self._task is not None:
            self._task.cancel()

    def _listen(self) -> None:
        # The server's receive() itself is the task: no coroutine of ours held per response.
        self._listener = asyncio.ensure_future(self._receive())
        self._listener.add_done_callback(self._heard)

    def _heard(self, listener: asyncio.Future[Message]) -> None:
        if listener.cancelled() or listener.exception() is not None:
            return
        if listener.result()["type"] != "http.disconnect":
            self._listen()
            return
        self._gone()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._listener is not None:
            self._listener.cancel()
        if self._unwatch is not None:
            self._unwatch()
        if self.disconnected and exc_type is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()
            return True
        return False


ErrorRenderer = Callable[[errors.TokenRelayError], Response]


async def send_error_before_start(
    send: Send, exc: errors.TokenRelayError, scope: Scope, render: ErrorRenderer = error_response
) -> None:
    response = render(exc)
    response.raw_headers.extend(rate_limit.take())
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class EventStreamResponse:
    """Server-Sent Events following a stream's log from ``offset``."""

    # One per open response, thousands at once: no per-instance __dict__.
    __slots__ = ("before_end", "encoder", "headers", "offset", "render_error", "settings", "stream")

    def __init__(
        self,
        stream: Stream,
        encoder: Encoder,
        settings: StreamSettings,
        *,
        offset: int = 0,
        headers: Mapping[str, str] | None = None,
        render_error: ErrorRenderer = error_response,
        before_end: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.stream = stream
        self.encoder = encoder
        # Awaited between the stream's last events and the end of the body: what a client
        # that has read to the end may rely on (a conversation's reply is stored).
        self.before_end = before_end
        self.settings = settings
        self.offset = offset
        self.render_error = render_error
        # Every stream names itself, so any client can re-attach to it or cancel it.
        self.headers: Sequence[tuple[bytes, bytes]] = [
            *SSE_HEADERS,
            (b"x-stream-id", stream.id.encode()),
        ] + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One frame for the whole life of the response (thousands are open at once): the
        # start is a coroutine that ends before the events are followed, the loop is inline.
        stream = self.stream
        log = stream.log
        stream.attach()
        try:
            async with WatchDisconnect(receive, scope):
                if not await self._start(scope, send):
                    return
                offset = self.offset
                telemetry = stream.telemetry
                loop = asyncio.get_running_loop()
                # One deadline, one timer, for both clocks a response keeps: while it waits
                # for events, the next ping; while it sends, the send timeout.
                deadline = Deadline()
                try:
                    while True:
                        if len(log) > offset:
                            batch = log.read(offset, MAX_WRITE_CHARS)
                            data = self.encoder.encode(batch, offset + 1)
                            offset += len(batch)
                            if telemetry is not None and telemetry.delivered is None:
                                telemetry.delivering()
                            # The last events and the end of the body in one write.
                            last = log.closed and offset == len(log)
                            if last and self.before_end is not None:
                                if data and not await self._send_within(send, data, deadline):
                                    return
                                await self.before_end()
                                data = b""
                            if (data or last) and not await self._send_within(
                                send, data, deadline, more=not last
                            ):
                                return
                            if last:
                                return
                            # Not held while the response waits for more: memory per stream.
                            del batch, data
                            continue
                        if log.closed:
                            if self.before_end is not None:
                                await self.before_end()
                            await send(
                                {"type": "http.response.body", "body": b"", "more_body": False}
                            )
                            return
                        deadline.move(loop.time() + self.settings.ping_interval)
                        try:
                            await log.wait(offset)
                        except asyncio.CancelledError:
                            if not deadline.expired():
                                raise
                            if not await self._send_within(send, PING, deadline):
                                return
                finally:
                    deadline.disarm()
        finally:
            stream.detach()

    async def _start(self, scope: Scope, send: Send) -> bool:
        """Wait until the stream may answer, then send the head; False if it answered an error."""
        log = self.stream.log
        await log.wait_committed()
        failed = log.error_before_start
        if failed is not None and self.offset <= 1:
            await send_error_before_start(send, failed.error, scope, self.render_error)
            return False
        headers = [*self.headers, *rate_limit.take()]
        self.headers = ()  # sent once; not kept for the stream
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        return True

    async def _send_within(
        self, send: Send, data: bytes, deadline: Deadline, *, more: bool = True
    ) -> bool:
        """Send ``data`` (and with ``more`` false, the body's end); False when the client has
        stopped reading for the send timeout."""
        loop = asyncio.get_running_loop()
        deadline.move(loop.time() + self.settings.send_timeout)
        try:
            await send({"type": "http.response.body", "body": data, "more_body": more})
        except asyncio.CancelledError:
            if deadline.expired():
                logger.warning(
                    "dropped a client of stream %s: it read nothing for %ss",
                    self.stream.id,
                    self.settings.send_timeout,
                )
                dropped_client.set(True)
                return False
            raise
        deadline.move(math.inf)
        return True


class CollectedResponse:
    """Wait for the whole generation, then answer once (``stream: false`` clients)."""

    def __init__(
        self,
        stream: Stream,
        render: Callable[[Stream], Awaitable[tuple[int, bytes]]],
        render_error: ErrorRenderer = error_response,
    ) -> None:
        self.stream = stream
        self.render = render
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        stream.attach()
        try:
            async with WatchDisconnect(receive, scope):
                while not stream.log.closed:
                    await stream.log.wait(len(stream.log))
                last = stream.log.last
                if isinstance(last, Failed):
                    await send_error_before_start(send, last.error, scope, self.render_error)
                    return
                status, body = await self.render(stream)
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(b"content-type", b"application/json"), *rate_limit.take()],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            stream.detach()
