"""``/metrics`` on a port of its own (``observability.metrics_port``), for a scraper.

A bare HTTP/1.0 listener in the app's event loop: one GET per connection, ``/metrics`` only,
no credentials (bind it where only the scraper reaches; ``metrics_host`` is loopback by
default). Everything else is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

Render = Callable[[], Awaitable[bytes]]
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
READ_TIMEOUT = 5.0


async def start(host: str, port: int, render: Render) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = head.split(b" ", 2)
            if method == b"GET" and path.split(b"?")[0] == b"/metrics":
                status, content_type, body = b"200 OK", CONTENT_TYPE, await render()
            else:
                status, content_type, body = b"404 Not Found", b"text/plain", b"not found\n"
            writer.write(
                b"HTTP/1.0 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, content_type, len(body), body)
            )
            await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port)
