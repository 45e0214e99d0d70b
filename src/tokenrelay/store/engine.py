"""The database engine: SQLite through aiosqlite by default, PostgreSQL through asyncpg.

SQLite is tuned for many concurrent writers in one process: WAL (readers never block the
writer), a busy timeout (a writer waits for the lock instead of failing with "database is
locked"), and ``BEGIN IMMEDIATE`` for write transactions, because a deferred transaction that
starts reading and then writes cannot wait for the lock: SQLite fails it at once. Within one
process the store also queues its writers itself (see ``Store._write``); the busy timeout is
for other processes on the same file.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Execution option a write transaction sets so SQLite takes the write lock when it begins.
WRITE = "tokenrelay_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Set on every SQLite connection the store opens (the direct connection's too, store.direct).
SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode = WAL",
    # Durable across a process crash in WAL mode; only a power cut may lose a commit.
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
}


class DatabaseURLError(ValueError):
    """The database URL names no backend tokenrelay supports."""


def async_url(raw: str) -> URL:
    """``sqlite:///x.db`` and ``postgresql://…`` with the async driver tokenrelay uses."""
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise DatabaseURLError(f"database_url {raw!r} is not a database URL") from exc
    driver = _ASYNC_DRIVERS.get(url.drivername, url.drivername)
    if driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise DatabaseURLError(
            f"database_url uses {url.drivername!r}; use sqlite:///path or postgresql://…"
        )
    return url.set(drivername=driver)


def create_engine(raw_url: str, **options: Any) -> AsyncEngine:
    url = async_url(raw_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, **options)
    return create_async_engine(url, pool_pre_ping=True, **options)


def sqlite_file(database: str | None) -> str | None:
    """The file an SQLite URL's database is, or None for one private to the connection that
    opens it (in memory) or named by a URI."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _create_private(database: str | None) -> None:
    """Create the database file readable by its owner only (SQLite gives its -wal and -shm
    files the same mode); SQLite itself would create it world-readable under a usual umask."""
    database = sqlite_file(database)
    if database is None:
        return
    # A missing folder is SQLite's to report, as it would without this.
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _sqlite_engine(url: URL, **options: Any) -> AsyncEngine:
    _create_private(url.database)
    engine = create_async_engine(url, pool_size=5, max_overflow=20, pool_timeout=60, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _connected(dbapi_connection: Any, record: Any) -> None:
        # SQLAlchemy, not the driver, starts transactions (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def display_url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)
