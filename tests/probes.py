"""A loop-lag probe: how long ``/healthz`` takes while something else runs against a gateway.

A gateway whose event loop is held (a provider that never yields, a parser growing a buffer)
answers its health check late; the probe asks every ``every`` seconds on a connection of its
own and records each answer's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp


@contextlib.asynccontextmanager
async def healthz_latencies(url: str, every: float = 0.02) -> AsyncIterator[list[float]]:
    """Probe ``url``'s ``/healthz`` until the block ends; the list fills as answers come."""
    latencies: list[float] = []

    async def probe(http: aiohttp.ClientSession) -> None:
        while True:
            started = time.monotonic()
            async with http.get(f"{url}/healthz") as response:
                await response.read()
                assert response.status == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(every)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        task = asyncio.create_task(probe(http))
        try:
            yield latencies
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # An answer still outstanding counts too: a stalled loop may be stalled right now.
            assert task.cancelled() or task.exception() is None


def scripted_config(folder: Path, extra: str = "") -> Path:
    """A config file serving only the scripted ``demo`` model."""
    path = folder / "tokenrelay.toml"
    path.write_text(f'[models.demo]\nprovider = "scripted"\n{extra}')
    return path
