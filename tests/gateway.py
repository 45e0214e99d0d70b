"""A real tokenrelay on a free loopback port, served by uvicorn in the test's event loop.

Starlette's TestClient and httpx's ASGITransport buffer whole bodies, so streaming is only
tested over real sockets. Running uvicorn in-process keeps the relay inspectable
(``gateway.relay``) for leak checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import uvicorn
from starlette.applications import Starlette

from tokenrelay.app import create_app
from tokenrelay.config import Quota, Settings, load_settings
from tokenrelay.relay import Relay
from tokenrelay.services import Services, services_of
from tokenrelay.serving.server import GatewayServer, uvicorn_config


class _QuietServer(GatewayServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The test runner owns the signals.
        yield


@dataclass
class Gateway:
    url: str
    app: Starlette
    server: uvicorn.Server

    @property
    def services(self) -> Services:
        return services_of(self)

    @property
    def relay(self) -> Relay:
        return self.services.relay

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)


NO_QUOTA = dict.fromkeys(Quota.model_fields, 0)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def settings(**overrides: Any) -> Settings:
    """Settings for a test; ``models`` defaults to the scripted ``demo`` model, and the default
    per-user limits are off but for those the test sets (tests of them use load_settings)."""
    overrides.setdefault("models", {"demo": {"provider": "scripted"}})
    overrides["rate_limits"] = {**NO_QUOTA, **overrides.get("rate_limits", {})}
    return load_settings(**overrides)


@contextlib.asynccontextmanager
async def serve(
    config: Settings | None = None, tracer: Any = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    config = config or settings(**overrides)
    app = create_app(config, tracer=tracer)
    sock = free_socket()
    server = _QuietServer(
        uvicorn_config(app, config, log_level="warning"),
        send_timeout=config.streams.send_timeout,
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the gateway did not start (its startup failed)")
            await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        yield Gateway(url=f"http://127.0.0.1:{port}", app=app, server=server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return orjson.loads(self.data)


def parse_sse(text: str) -> Iterator[SSEEvent]:
    """A deliberately plain SSE reader for assertions (LF only: the gateway writes LF)."""
    for block in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if "data" in fields:
            yield SSEEvent(
                event=(fields.get("event") or ["message"])[0],
                data="\n".join(fields["data"]),
                id=(fields.get("id") or [None])[0],
            )


async def read_sse(response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    """Events as they arrive on the socket."""
    buffer = ""
    async for chunk in response.content.iter_any():
        buffer += chunk.decode()
        *blocks, buffer = buffer.split("\n\n")
        for block in blocks:
            for event in parse_sse(block + "\n\n"):
                yield event
