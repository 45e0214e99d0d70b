"""The memory savings that lean on uvicorn's and asyncio's internals, checked to still apply.

``serving/protocol.py`` swaps three idle per-connection deques for lists, found by the names
uvicorn gives them. If a uvicorn release renames them, the swap silently stops and every open
stream costs about 2 KB more (make bench): this test fails loudly instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from tokenrelay.serving.protocol import GatewayHttpProtocol


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _connected() -> Iterator[GatewayHttpProtocol]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    config = Config(app, http="httptools", log_level="warning")
    config.load()
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(_Transport())
    try:
        yield protocol
    finally:
        protocol.connection_lost(None)


async def test_uvicorns_idle_queues_are_still_found_and_swapped_for_lists() -> None:
    with _connected() as protocol:
        assert type(protocol.pipeline) is not list and isinstance(protocol.pipeline, list)
        writable = protocol.flow._is_writable_event
        assert isinstance(writable, asyncio.Event)
        assert type(writable._waiters) is list  # type: ignore[attr-defined]


async def test_a_connection_keeps_the_small_shared_key_dict_uvicorn_gives_it() -> None:
    """CPython shares a dict's keys between instances up to 30 of them; past that each
    connection gets a table of its own (about 1.6 KB instead of 300 bytes, make bench): the
    protocol's own attributes are slots so that uvicorn's stay within the limit."""
    with _connected() as protocol:
        assert len(vars(protocol)) <= 30
        assert sys.getsizeof(vars(protocol)) < 600
