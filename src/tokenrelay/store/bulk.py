"""Many rows into one table through the driver's ``executemany``, for the usage ledger.

``connection.execute(insert(table), rows)`` does per row, on the event loop, what SQLAlchemy
does for any statement: a dict per row, the compiled statement's parameter setup, a bind
processor per column. For the ledger's batches of up to 500 rows that held the loop for about
6 ms at a time, once a second, and every stream waiting on the loop waited for it (measured
with ``time.thread_time()`` around one flush). Here the statement is compiled once, the
columns' bind processors are found once, and each row is converted when it is made
(:meth:`BulkInsert.row`), so a flush only hands the driver tuples that are ready: the same
values SQLAlchemy would have sent, its conversions included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

Processor = Callable[[Any], Any]
Row = tuple[Any, ...]


class BulkInsert:
    """``INSERT INTO table (columns…)`` for ``dialect``, its rows made by :meth:`row`."""

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        statement = insert(table).values({name: bindparam(name) for name in columns})
        compiled = statement.compile(dialect=dialect)
        # Both drivers tokenrelay runs on (sqlite3's qmark, asyncpg's $n) are positional.
        names = compiled.positiontup
        if names is None:
            raise TypeError(f"{dialect.name}'s parameters are not positional")
        self.sql = str(compiled)
        self._order = [list(columns).index(name) for name in names]
        self._processors: list[tuple[int, Processor]] = []
        for position, name in enumerate(names):
            # The dialect's own type (SQLite's DATETIME writes text) behind any decorator.
            column_type = table.c[name].type
            process: Processor | None = column_type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._processors.append((position, process))

    def row(self, values: Sequence[Any]) -> Row:
        """``values`` in ``columns``' order, as the driver takes them."""
        ordered = [values[index] for index in self._order]
        for position, process in self._processors:
            if ordered[position] is not None:
                ordered[position] = process(ordered[position])
        return tuple(ordered)

    async def run(self, connection: AsyncConnection, rows: list[Row]) -> None:
        if rows:
            await connection.exec_driver_sql(self.sql, rows)
