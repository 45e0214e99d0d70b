"""The bare relay loop: the least a Python gateway can do, as a column to hold tokenrelay to.

No features at all: no auth, no limits, no log, no resume, no metrics, no timeouts. An
asyncio protocol reads a request (HTTP/1.1, keep-alive, Content-Length bodies), the same
upstream client as tokenrelay's (``tokenrelay.client``) posts it upstream unchanged, and each
upstream SSE event's text is decoded with orjson and written back as a chat.completion.chunk
on a chunked response. What tokenrelay costs beyond this is what its features cost.

    python -m bench.bare --port 8002 --upstream http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import cast

import orjson

from tokenrelay.client import Client

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
UPSTREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
CHUNK_HEAD = b'data: {"id":"bare","object":"chat.completion.chunk","choices":[{"index":0,"delta":'


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class BareRelay(asyncio.Protocol):
    def __init__(self, client: Client, url: str) -> None:
        self.client = client
        self.url = url
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        if self.busy:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in self.buffer[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        self.busy = True
        asyncio.get_running_loop().create_task(self._relay(body))

    async def _relay(self, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        response = await self.client.post(self.url, body, UPSTREAM_HEADERS, connect_timeout=5)
        try:
            transport.write(HEAD)
            pending = b""
            while chunk := await response.read():
                *events, pending = (pending + chunk).split(b"\n\n")
                out = []
                for event in events:
                    if not event.startswith(b"data: ") or event == b"data: [DONE]":
                        continue
                    choices = orjson.loads(event[6:]).get("choices") or ()
                    text = choices[0]["delta"].get("content") if choices else None
                    if text:
                        delta = orjson.dumps({"content": text})
                        out.append(CHUNK_HEAD + delta + b',"finish_reason":null}]}\n\n')
                if out:
                    transport.write(_chunk(b"".join(out)))
            finish = CHUNK_HEAD + b'{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
            transport.write(_chunk(finish) + b"0\r\n\r\n")
        finally:
            response.release()
        self.busy = False
        self._next()


async def serve(port: int, upstream: str) -> None:
    client = Client()
    loop = asyncio.get_running_loop()
    url = upstream.rstrip("/") + "/chat/completions"
    server = await loop.create_server(lambda: BareRelay(client, url), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, with /v1")
    args = parser.parse_args()
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
