"""uvicorn, configured for streaming and shut down in the right order."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from tokenrelay.config import Settings
from tokenrelay.http.streaming import dropped_client
from tokenrelay.relay import Relay
from tokenrelay.services import Services
from tokenrelay.serving.protocol import GatewayHttpProtocol

UNFINISHED = "ASGI callable returned without completing response"


class GatewayServer(uvicorn.Server):
    """Drains streams on SIGTERM, and ends live ones with ``server_shutdown`` *before* waiting
    for connections to close.

    On the first SIGTERM the server goes on listening: ``/readyz`` answers 503 and new
    streams are refused with ``server_shutdown`` (503, ``Retry-After``) while the streams in
    flight get up to ``drain_timeout`` to finish; then uvicorn shuts down as usual. A second
    signal, or SIGINT, stops at once.

    uvicorn drains open connections before the app's lifespan ends, and a stream never
    drains by itself: without ending them first, clients would see a cut connection instead
    of an error event.
    """

    def __init__(
        self, config: uvicorn.Config, *, send_timeout: float = 30.0, drain_timeout: float = 25.0
    ) -> None:
        super().__init__(config)
        self.send_timeout = send_timeout
        self.drain_timeout = drain_timeout
        self._drain_asked = False
        self._draining: asyncio.Task[None] | None = None
        server_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, QuietDroppedClients) for f in server_log.filters):
            server_log.addFilter(QuietDroppedClients())

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # What starting made (modules, the app, its services: some 100,000 objects) lives as
        # long as the process. Left to the collector, every full collection walks all of it, a
        # pause of tens of milliseconds that lands on whichever request is in flight; frozen,
        # collections see only what requests make.
        gc.collect()
        gc.freeze()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            self.config.load()
            sockets = [self.config.bind_socket()]
        for sock in sockets:
            abort_stuck_clients(sock, self.send_timeout)
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only flags here; on_tick starts the drain in the loop.
        if sig == signal.SIGTERM and not self._drain_asked and not self.should_exit:
            self._drain_asked = True
            self._captured_signals.append(sig)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_asked and self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        relay = self._relay()
        if relay is not None:
            logging.getLogger("tokenrelay").warning(
                "SIGTERM: draining %d streams (up to %ss)", relay.live, self.drain_timeout
            )
            await relay.drain(self.drain_timeout)
        self.should_exit = True

    def _relay(self) -> Relay | None:
        state = getattr(_unwrap(self.config.loaded_app), "state", None)
        services: Services | None = getattr(state, "services", None)
        return services.relay if services is not None else None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        relay = self._relay()
        if relay is not None:
            await relay.shutdown()
        await super().shutdown(sockets)


class QuietDroppedClients(logging.Filter):
    """Drop uvicorn's ERROR for a response the gateway left unfinished on purpose.

    A response lets go of a client that stopped reading (its send timeout) without finishing,
    as finishing would wait on that client too; it logs the drop itself and marks its task
    (:data:`~tokenrelay.http.streaming.dropped_client`), and uvicorn logs from the same task.
    Any other unfinished response is still reported: that one is a bug.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (dropped_client.get() and record.getMessage().startswith(UNFINISHED))


def abort_stuck_clients(sock: socket.socket, send_timeout: float) -> None:
    """Abort connections whose peer stops reading for twice ``send_timeout`` (Linux).

    After a send timeout the app lets go of a response, but uvicorn closes the connection
    gracefully, which waits on a peer that never reads. TCP_USER_TIMEOUT (inherited by accepted
    sockets) makes the kernel abort it instead of holding its buffers until TCP gives up. It is
    twice the send timeout so that the app lets go first and says so (the kernel's clock starts
    as soon as the peer's window closes, before the app's send blocks): an equal one raced it.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(send_timeout * 2000)))


def _unwrap(app: object) -> object:
    # uvicorn wraps the app in its own middleware; the Starlette app is at the bottom.
    while not isinstance(app, Starlette) and hasattr(app, "app"):
        app = app.app
    return app


def uvicorn_config(app: Starlette, settings: Settings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "http": functools.partial(GatewayHttpProtocol, limits=settings.server),
        "timeout_keep_alive": settings.server.idle_timeout,
        "ws": "websockets-sansio",
        "ws_max_size": settings.limits.ws_max_frame_bytes,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": 10,
        "proxy_headers": False,
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]
