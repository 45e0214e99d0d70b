"""The usage ledger: one row per admitted stream, written in batches.

Streams end at any rate; the database takes one insert a second (or per ``batch`` rows) for
all of them, off the streams' own path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tokenrelay.store.accounts import Accounts, StreamUsage
from tokenrelay.store.bulk import Row

logger = logging.getLogger("tokenrelay.limits")

MAX_PENDING = 10_000


class Ledger:
    def __init__(self, accounts: Accounts, *, interval: float = 1.0, batch: int = 500) -> None:
        self.accounts = accounts
        self.interval = interval
        self.batch = batch
        # Rows ready for the database: each is converted as its stream ends, so that a flush
        # does no work per row on the event loop (tokenrelay.store.bulk).
        self._pending: list[Row] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def add(self, row: StreamUsage) -> None:
        if len(self._pending) >= MAX_PENDING:
            # The database has been failing for a while; memory must stay bounded.
            logger.error("usage ledger full: dropping the oldest unwritten row")
            del self._pending[0]
        self._pending.append(self.accounts.usage_row(row))
        if len(self._pending) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-ledger")

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every row added so far."""
        async with self._lock:
            while self._pending:
                rows = self._pending[: self.batch]
                try:
                    await self.accounts.record_usage(rows)
                except Exception:
                    logger.exception("writing %d usage rows failed; will retry", len(rows))
                    return
                del self._pending[: len(rows)]

    async def aclose(self) -> None:
        """Write what is left. A batch being written is let finish, never cancelled: its
        transaction may already be committed, and the rows, still pending here, would be written
        a second time by the last flush."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # Returns whatever became of the task (cancelled by someone else, even).
            await asyncio.wait([self._task])
        await self.flush()
