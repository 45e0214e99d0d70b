"""What every fake upstream shares: the server, its records, scripts and the fault loop.

A fake subclasses :class:`FakeUpstream` and answers in ``_respond``; its script model extends
:class:`BaseScript` with the keys of its own wire.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenrelay.testing._http import ConnectionInfo, HTTPServer, Request, Response

SSE_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
]


def fake_prompt(**script: Any) -> str:
    """A user message that carries ``script`` to the fake through any client."""
    return json.dumps({"fake": script})


@dataclass(eq=False)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    connection: ConnectionInfo
    script: dict[str, Any] | None = None
    _response: Response | None = field(default=None, repr=False)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def finished(self) -> bool:
        return self._response is not None and self._response.finished_at is not None

    @property
    def client_closed_early(self) -> bool:
        return self._response is not None and self._response.client_closed_early

    @property
    def closed_at(self) -> float | None:
        return self.connection.closed_at

    async def wait_closed(self, timeout: float) -> bool:
        return await self.connection.wait_closed(timeout)


class BaseScript(BaseModel):
    """The script keys every fake understands; each fake adds its wire's own."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[str]
    repeat: int = Field(default=1, ge=1)
    delay: float = Field(default=0.0, ge=0)
    first_delay: float = Field(default=0.0, ge=0)
    headers_delay: float = Field(default=0.0, ge=0)
    end_delay: float = Field(default=0.0, ge=0)
    status: int = Field(default=200, ge=100, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    truncate_after: int | None = Field(default=None, ge=0)
    drop_after: int | None = Field(default=None, ge=0)
    hang: bool = False
    hang_after: int | None = Field(default=None, ge=0)
    framing: Literal["chunked", "close"] = "chunked"


class ScriptError(Exception):
    """The request's script is not one: the fake answers 400 with this message."""


def script_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"fake script: {where}: {first['msg']}"


def script_in_messages(messages: Any) -> Any:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str) and content.lstrip().startswith("{"):
                try:
                    # The stdlib parser keeps lone surrogates ("\ud83d"), which scripts use.
                    parsed = json.loads(content)
                except ValueError:
                    return None
                if isinstance(parsed, dict):
                    return parsed.get("fake")
            return None
    return None


class FakeUpstream:
    """A scripted, recording HTTP server on loopback; subclasses answer in ``_respond``."""

    def __init__(
        self, *, host: str, port: int, script: dict[str, Any] | None, record: bool
    ) -> None:
        self.default_script: dict[str, Any] = dict(script or {})
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.connections: list[ConnectionInfo] = []
        self._server = HTTPServer(self._handle, host, port, on_connection=self._on_connection)
        self._counter = 0

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    @property
    def open_connections(self) -> int:
        return self._server.open_connections

    async def start(self) -> Self:
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_connection(self, info: ConnectionInfo) -> None:
        if self.record:
            self.connections.append(info)

    async def _handle(self, request: Request, response: Response, conn: ConnectionInfo) -> None:
        recorded = RecordedRequest(
            request.method,
            request.path,
            request.headers,
            request.body,
            time.monotonic(),
            conn,
            _response=response,
        )
        if self.record:
            self.requests.append(recorded)
        await self._respond(request, response, recorded)

    async def _respond(
        self, request: Request, response: Response, recorded: RecordedRequest
    ) -> None:
        raise NotImplementedError

    def _script_of(self, body: dict[str, Any]) -> dict[str, Any]:
        script = body.get("fake")
        if script is None:
            script = script_in_messages(body.get("messages"))
        if script is not None and not isinstance(script, dict):
            raise ScriptError("the fake script must be a JSON object")
        return {**self.default_script, **(script or {})}


async def start_stream(
    response: Response, script: BaseScript, extra: list[tuple[str, str]]
) -> None:
    """Send the head of an event stream; a ``hang`` script then sends nothing more."""
    response.start(200, SSE_HEADERS + extra, framing=script.framing)
    if script.hang:
        await asyncio.Event().wait()


async def write_paced(
    response: Response,
    script: BaseScript,
    frames: Iterator[bytes],
    count: int,
    cut: Callable[[int], Awaitable[bool]],
) -> bool:
    """Write ``count`` frames one per write, applying the ``*_after`` faults; False if cut.

    ``cut(sent)`` applies the wire's own faults before each frame (and after the last) and
    says whether it ended the stream.
    """
    for sent in range(count + 1):
        if script.hang_after == sent:
            await asyncio.Event().wait()
        if script.drop_after == sent:
            response.abort()
            await asyncio.Event().wait()  # cancelled as the connection goes
        if await cut(sent):
            return False
        if sent == count:
            return True
        if sent and script.delay:
            await asyncio.sleep(script.delay)
        response.write(next(frames))
        await response.drain()
        if not script.delay:
            await asyncio.sleep(0)  # let other streams write between our events
    return True


async def serve_until_signalled(fake: FakeUpstream, name: str) -> None:
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"{name} listening on {fake.url}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await fake.stop()


def run_until_signalled(fake: FakeUpstream, name: str) -> None:
    """A fake as its own process, on uvloop (as the gateway runs) so it costs a benchmark little."""
    import uvloop

    uvloop.run(serve_until_signalled(fake, name))


def argument_parser(module: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--record", action="store_true", help="keep every request in memory")
    return parser
