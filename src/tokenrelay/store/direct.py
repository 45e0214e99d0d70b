"""A connection of the store's own for its background work, beside SQLAlchemy: the usage
ledger's batches of inserts, the sweep for replies whose instance died, and cached keys read
again before they run out.

Through SQLAlchemy a batch is a pool checkout (on PostgreSQL with a ping), ``BEGIN``, the
insert, ``COMMIT`` and the pool's rollback as the connection goes back, each a step of Python
on the event loop, and on SQLite each a hop to aiosqlite's thread and back. A flush held the
loop for 1.5-2.4 ms on either database, once a second, with every open stream's next token and
every arriving request waiting behind it. Here a batch is one step:

* SQLite: a ``sqlite3`` connection on a thread of its own runs the whole transaction in one
  hop: 0.27 ms on the loop for 5 rows, 0.37 for 250;
* PostgreSQL: one connection, checked out once and held, takes asyncpg's ``executemany``
  (atomic: asyncpg wraps it in a transaction): 0.63 ms for 5 rows, 1.13 for 250 (asyncpg
  encodes the rows on the loop).

(``python -m bench --only ledger``, which measures both ways in one run; Zen 3 EPYC.)

The SQLite thread runs at the lowest CPU priority (nice 19, Linux only; there niceness is per
thread). A batch of 500 rows is 1-3 ms of CPU in that thread, and when the gateway has one core
(one worker per core, or the bench's pinning) that time was taken from the event loop: first
tokens that arrived during a write waited behind it (paired added time to first token, p90 1.0-1.2
ms during a write against 0.6-0.7 otherwise; 0.68 during a write at nice 19, Zen 5). The GIL
keeps it from starving: a thread that waits for it is handed it within the switch interval.

The sweep runs every third of ``reply_lease`` on every instance, also when it is idle, and a key
in use is read again every half ``key_cache_ttl``. Through SQLAlchemy and aiosqlite each was
1.1-1.2 ms on the loop and 20-45 thread switches; the sweep made two thirds of an idle gateway's
wakeups. Here each is one step.

A connection that fails is let go; the next batch opens another, so a database that went away
and came back is written to again (the ledger retries what failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokenrelay.store.bulk import Row
from tokenrelay.store.engine import SQLITE_PRAGMAS, sqlite_file


class DirectConnection(Protocol):
    async def insert_many(self, sql: str, rows: list[Row]) -> None:
        """Run ``sql`` once per row, all rows or none."""

    async def execute(self, sql: str, parameters: Row) -> int:
        """Run ``sql`` once, in a transaction of its own; how many rows it changed."""

    async def fetch_one(self, sql: str, parameters: Row) -> Row | None:
        """The first row of the query ``sql``, as the driver gives it, or None."""

    async def close(self) -> None: ...


def direct_connection(engine: AsyncEngine) -> DirectConnection | None:
    """The direct connection to ``engine``'s database, or None where only SQLAlchemy's path can
    reach it (an in-memory or URI-named SQLite database is private to the connection that opened
    it)."""
    if engine.dialect.name == "postgresql":
        return HeldConnection(engine)
    path = sqlite_file(engine.url.database) if engine.dialect.name == "sqlite" else None
    return SQLiteThread(path) if path is not None else None


LOWEST_PRIORITY = 19
# sqlite3.Connection.execute or .executemany.
Statement = Callable[[sqlite3.Connection, str, Any], sqlite3.Cursor]
T = TypeVar("T")


def _yield_to_requests() -> None:
    """Give the calling thread the lowest CPU priority, where the OS keeps one per thread."""
    if sys.platform == "linux":
        # ``who`` 0 is the calling thread on Linux, not the whole process.
        os.setpriority(os.PRIO_PROCESS, 0, LOWEST_PRIORITY)


def _in_transaction(
    connection: sqlite3.Connection, run: Statement, sql: str, parameters: Any
) -> int:
    # The write lock when the transaction begins, as the store's own writers take it.
    connection.execute("BEGIN IMMEDIATE")
    changed = run(connection, sql, parameters).rowcount
    connection.execute("COMMIT")
    return changed


def _first_row(connection: sqlite3.Connection, sql: str, parameters: Row) -> Row | None:
    row: Row | None = connection.execute(sql, parameters).fetchone()
    return row


class SQLiteThread:
    """A ``sqlite3`` connection opened, used and closed on one thread of its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tokenrelay-sqlite", initializer=_yield_to_requests
        )
        self._connection: sqlite3.Connection | None = None

    async def insert_many(self, sql: str, rows: list[Row]) -> None:
        await self._on_thread(_in_transaction, sqlite3.Connection.executemany, sql, rows)

    async def execute(self, sql: str, parameters: Row) -> int:
        return await self._on_thread(_in_transaction, sqlite3.Connection.execute, sql, parameters)

    async def fetch_one(self, sql: str, parameters: Row) -> Row | None:
        return await self._on_thread(_first_row, sql, parameters)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._let_go)
        self._thread.shutdown(wait=False)

    async def _on_thread(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` on the thread; a connection it fails on is let go."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._with_connection, work, *args)

    def _with_connection(self, work: Callable[..., T], *args: Any) -> T:
        connection = self._connection or self._connect()
        try:
            return work(connection, *args)
        except BaseException:
            self._let_go()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level None: the transaction is the one _in_transaction begins, not the
        # module's own.
        connection = sqlite3.connect(self.path, isolation_level=None)
        for pragma in SQLITE_PRAGMAS:
            connection.execute(pragma)
        self._connection = connection
        return connection

    def _let_go(self) -> None:
        # Closing rolls back a transaction left open by a failure.
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class HeldConnection:
    """One PostgreSQL connection from the engine's pool, held between batches."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._connection: AsyncConnection | None = None
        self._turn = asyncio.Lock()

    async def insert_many(self, sql: str, rows: list[Row]) -> None:
        async with self._driver() as driver:
            await driver.executemany(sql, rows)

    async def execute(self, sql: str, parameters: Row) -> int:
        async with self._driver() as driver:
            # asyncpg answers with the command's tag: "UPDATE 3".
            status: str = await driver.execute(sql, *parameters)
        return int(status.rsplit(" ", 1)[-1])

    async def fetch_one(self, sql: str, parameters: Row) -> Row | None:
        async with self._driver() as driver:
            row = await driver.fetchrow(sql, *parameters)
        return None if row is None else tuple(row)

    @contextlib.asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        """The held connection's asyncpg connection; its single statements are atomic."""
        # One operation at a time on a connection: batches from several tasks take turns.
        async with self._turn:
            connection = self._connection
            if connection is None:
                connection = self._connection = await self.engine.connect()
            try:
                raw = await connection.get_raw_connection()
                yield raw.driver_connection
            except BaseException:
                # Its state after a failure (or a cancellation mid-batch) is unknown: not reused.
                self._connection = None
                await connection.invalidate()
                await connection.close()
                raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
