"""Readiness: every dependency pinged at once, each within a short timeout, named when down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

logger = logging.getLogger("tokenrelay.ops")

Ping = Callable[[], Awaitable[None]]


class Readiness:
    def __init__(self, checks: Mapping[str, Ping], timeout: float) -> None:
        self.checks = dict(checks)
        self.timeout = timeout
        # The last answers (1 up, 0 down), read by the dependency gauges.
        self.last: dict[str, int] = {}

    async def check(self) -> dict[str, bool]:
        """Each dependency's name: whether it answered."""
        names = list(self.checks)
        answers = await asyncio.gather(*(self._ping(name) for name in names))
        found = dict(zip(names, answers, strict=True))
        self.last.update({name: int(up) for name, up in found.items()})
        return found

    async def _ping(self, name: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self.checks[name]()
        except Exception:
            logger.warning("readiness: %s did not answer", name, exc_info=True)
            return False
        return True
