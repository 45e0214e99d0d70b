"""uvicorn's httptools protocol, with its idle queues made small.

An open stream keeps its connection's protocol alive for as long as it streams, thousands at
once. uvicorn gives each connection three queues that are empty nearly all of the time: the
pipeline of requests waiting behind the current one, and the waiter lists of two
``asyncio.Event`` objects (the request's message event and the flow control's writable event).
Each is a ``collections.deque``, which holds a 64-slot block from the start: about 600 bytes
empty, against 56 for an empty list. The operations they see (``appendleft``/``pop`` on the
pipeline; ``append``/``remove``/iteration on the waiters) are the same on a list, so they are
swapped for lists once uvicorn has made them; where a uvicorn version names them differently,
nothing is swapped and it runs as it ships.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Pipeline(list[Any]):
    """A FIFO of pipelined requests: ``appendleft`` in, ``pop`` out, as uvicorn uses its deque."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class LeanHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(getattr(self, "pipeline", None), deque) and not self.pipeline:
            self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _lean_waiters(getattr(self.flow, "_is_writable_event", None))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        _lean_waiters(getattr(self.cycle, "message_event", None))


def _lean_waiters(event: object) -> None:
    if isinstance(event, asyncio.Event):
        waiters = getattr(event, "_waiters", None)
        if isinstance(waiters, deque) and not waiters:
            event._waiters = []  # type: ignore[assignment]
