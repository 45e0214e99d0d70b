"""One way for a test to wait: poll a condition until it holds, bounded by a timeout."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, every: float = 0.01
) -> None:
    """Return once ``condition()`` (sync or async) is true; TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = condition()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            await asyncio.sleep(every)


async def until_value(
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float = 10.0,
    every: float = 0.05,
) -> T:
    """The first value ``read()`` gives that ``done`` accepts."""
    async with asyncio.timeout(timeout):
        while not done(value := await read()):
            await asyncio.sleep(every)
        return value
