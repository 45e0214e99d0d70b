"""uvicorn's httptools protocol, bounded against hostile clients, with its idle queues small.

Bounds (``[server]`` settings), none of which uvicorn's httptools protocol has by itself:

* a request head (request line and headers, finished or not) over ``max_header_bytes`` is a
  431; httptools grows an unfinished header by concatenation, so only counting the bytes
  received catches one that never ends;
* a head must arrive within ``header_timeout`` of its first byte, and a body within
  ``body_timeout`` of its head (a 408, or a plain close once a response has started);
* a connection that sends nothing is closed after ``idle_timeout``, the first request too
  (uvicorn times out only the wait between requests);
* past ``max_connections`` open connections (WebSockets included) a new one gets a 503.

Writes: a response's head leaves with its first body when that is sent in the same loop turn
(:class:`_HeadWithBody`), as a stream's first token is when the upstream's head and first event
come together, and a JSON answer always is: one send, and one wakeup of the client, fewer.

Memory:

An open stream keeps its connection's protocol alive for as long as it streams, thousands at
once. uvicorn gives each connection three queues that are empty nearly all of the time: the
pipeline of requests waiting behind the current one, and the waiter lists of two
``asyncio.Event`` objects (the request's message event and the flow control's writable event).
Each is a ``collections.deque``, which holds a 64-slot block from the start: about 600 bytes
empty, against 56 for an empty list. The operations they see (``appendleft``/``pop`` on the
pipeline; ``append``/``remove``/iteration on the waiters) are the same on a list, so they are
swapped for lists once uvicorn has made them; where a uvicorn version names them differently,
nothing is swapped and it runs as it ships. Measured with ``python -m bench --quick --only slow``
(500 open streams): 18.9 KB per stream with the swap, 20.6-21.3 KB without. uvicorn's upper
bound is pinned for it, and ``tests/unit/test_serving_internals.py`` fails when the names change.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tokenrelay.config import ServerSettings
from tokenrelay.http.streaming import ON_DISCONNECT

# After a refusal, the client's unread bytes are read and dropped this long before the close:
# closing on unread data sends a reset, and the client may lose the answer to it (nginx's
# lingering close).
LINGER = 1.0


class _Pipeline(list[Any]):
    """A FIFO of pipelined requests: ``appendleft`` in, ``pop`` out, as uvicorn uses its deque."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class GatewayHttpProtocol(HttpToolsProtocol):
    # uvicorn's protocol keeps 27 attributes in its __dict__; CPython shares a dict's keys
    # between instances (storing only the values, about 300 bytes) up to 30 keys, and past that
    # gives each instance a whole table of its own (about 1.6 KB). Ours are slots: one
    # connection per open stream, 1.3 KB less each.
    __slots__ = ("_head_bytes", "_in_head", "_on_lost", "_refused", "_timer", "limits")

    def __init__(self, *args: Any, limits: ServerSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or ServerSettings()
        self._head_bytes = 0
        self._in_head = False
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        self._on_lost: Callable[[], None] | None = None
        if isinstance(getattr(self, "pipeline", None), deque) and not self.pipeline:
            self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _lean_waiters(getattr(self.flow, "_is_writable_event", None))
        # This connection is already counted.
        if len(self.connections) > self.limits.max_connections:
            self.logger.warning("refused a connection: %d are open", len(self.connections) - 1)
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, "too many open connections")
            return
        # The wait for a first request is timed like the wait between two (keep-alive).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._lost()

    def _watch_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """The ON_DISCONNECT extension: one watcher at a time, the response streaming now."""
        self._on_lost = callback
        return self._unwatch_lost

    def _unwatch_lost(self) -> None:
        self._on_lost = None

    def _lost(self) -> None:
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # Every byte of an unfinished head: the request line and headers, ended or not.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._answer(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"the request head is over {self.limits.max_header_bytes} bytes",
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
        self._arm(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        if self.scope.get("path") is not None:  # not an upgrade: a body (maybe empty) follows
            self._arm(self.limits.body_timeout)
            # uvicorn types an extension's value as a dict; ASGI leaves it to the extension.
            extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
            extensions[ON_DISCONNECT] = self._watch_lost
            if self.cycle is not None and hasattr(self.cycle, "transport"):
                held = _HeadWithBody(self.cycle, self.transport, self.loop)
                self.cycle.transport = cast(asyncio.Transport, held)
        _lean_waiters(getattr(self.cycle, "message_event", None))

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        what = "head" if self._in_head else "body"
        self._answer(HTTPStatus.REQUEST_TIMEOUT, f"the request {what} took too long to arrive")

    def _answer(self, status: HTTPStatus, message: str) -> None:
        """Answer ``status`` if no response has started on this connection, and close it."""
        self._disarm()
        self._in_head = False
        if self.transport.is_closing() or self._refused:
            return
        self._refused = True
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            # The app may still be reading this request: tell it the client is gone.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            self._lost()
            if self.cycle.response_started:
                self.transport.close()
                return
        text = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status.value, status.phrase.encode(), len(text), text)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)


def _lean_waiters(event: object) -> None:
    if isinstance(event, asyncio.Event):
        waiters = getattr(event, "_waiters", None)
        if isinstance(waiters, deque) and not waiters:
            event._waiters = []  # type: ignore[assignment]


class _HeadWithBody:
    """The transport a request's cycle writes to until its first write has left.

    The first write (the response's head) is held until the next (its first body), which then
    leaves with it in one send, or until the end of this loop turn, so a head never waits for
    a body that is not ready. Once it has left, the cycle writes to the transport itself again:
    nothing is held, and no object kept, for the rest of a stream.
    """

    __slots__ = ("_cycle", "_held", "_loop", "_transport")

    def __init__(
        self, cycle: Any, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._cycle = cycle
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = data
            self._loop.call_soon(self._release, b"")
        else:
            self._release(data)

    def close(self) -> None:
        self._release(b"")
        self._transport.close()

    def _release(self, data: bytes) -> None:
        """Write what is held, and ``data`` after it; from now on the cycle writes directly."""
        if self._cycle is None:
            return
        held, self._held = self._held, None
        self._cycle.transport, self._cycle = self._transport, None
        if held is not None or data:
            self._transport.write(held + data if held is not None else data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
