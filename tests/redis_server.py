"""A real ``redis-server`` of the test's own, on a free loopback port, that tests may stop.

``stop()`` ends it by its PID (as a crash or a restart would), ``start()`` brings it back on
the same port (empty: nothing is saved), ``pause()``/``resume()`` freeze it with SIGSTOP so
that it accepts connections but never answers, the nastiest way for a dependency to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.gateway import free_socket

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            async with asyncio.timeout(10):
                while True:
                    assert self.process.returncode is None, "redis-server exited"
                    try:
                        if await client.ping():
                            return
                    except Exception:
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.resume()
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    # Another process may take the port between our choosing and redis binding it: retry.
    for attempt in range(3):
        with free_socket() as sock:
            port = sock.getsockname()[1]
        server = RedisServer(port)
        try:
            await server.start()
        except AssertionError:
            if attempt == 2:
                raise
            continue
        try:
            yield server
        finally:
            await server.stop()
        return
