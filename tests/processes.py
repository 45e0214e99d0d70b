"""Real ``tokenrelay serve`` processes for the tests that need one (kill -9, a crash, stdout),
and the databases they start on.

``async with serve_process(config) as served:`` starts one on a free loopback port;
``await served.until_listening(http)`` waits for its health check; on the way out it is
stopped by its PID if the test has not already done so.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.gateway import free_socket
from tokenrelay.store import schema
from tokenrelay.store.engine import create_engine


async def upgraded(url: str) -> str:
    """``url``, with its database brought to the current schema."""
    engine = create_engine(url)
    try:
        await schema.upgrade(engine)
    finally:
        await engine.dispose()
    return url


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def until_listening(self, http: aiohttp.ClientSession) -> None:
        async with asyncio.timeout(30):
            while True:
                assert self.process.returncode is None, "tokenrelay serve exited"
                try:
                    async with http.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)


@asynccontextmanager
async def serve_process(
    config: Path,
    *,
    env: Mapping[str, str] | None = None,
    stdout: int = asyncio.subprocess.DEVNULL,
    graceful: bool = False,
    args: Sequence[str] = (),
) -> AsyncIterator[ServeProcess]:
    """``tokenrelay serve --config config *args`` with ``env`` over this process's environment.

    On the way out a process still running is killed (terminated when ``graceful``).
    """
    with free_socket() as sock:
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokenrelay.cli",
        "serve",
        "--port",
        str(port),
        "--config",
        str(config),
        *args,
        env={**os.environ, **(env or {})},
        stdout=stdout,
        stderr=None if os.environ.get("TR_DEBUG") else asyncio.subprocess.DEVNULL,
    )
    try:
        yield ServeProcess(process, port)
    finally:
        if process.returncode is None:
            if graceful:
                process.terminate()
            else:
                process.kill()
        await process.wait()
