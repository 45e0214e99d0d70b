"""Statements compiled once, their parameters converted ahead, for the store's direct connection.

``connection.execute(insert(table), rows)`` does per row, on the event loop, what SQLAlchemy
does for any statement: a dict per row, the compiled statement's parameter setup, a bind
processor per column. For the ledger's batches of up to 500 rows that held the loop for about
6 ms at a time, once a second, and every stream waiting on the loop waited for it (measured
with ``time.thread_time()`` around one flush). Here the statement is compiled once, the
columns' bind processors are found once, and each row is converted when it is made
(:meth:`BulkInsert.row`), so a flush only hands the driver tuples that are ready: the same
values SQLAlchemy would have sent, its conversions included.

:class:`Prepared` does the same for one statement run now and then in the background (the sweep
for replies whose instance died, a cached key read again), which :mod:`tokenrelay.store.direct`
then runs in one step, and reads the rows of a query back as SQLAlchemy would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import Compiled, SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.expression import ClauseElement

Processor = Callable[[Any], Any]
Row = tuple[Any, ...]


def _positional(statement: ClauseElement, dialect: Dialect) -> tuple[SQLCompiler, Sequence[str]]:
    compiled: Compiled = statement.compile(dialect=dialect)
    # Both drivers tokenrelay runs on (sqlite3's qmark, asyncpg's $n) are positional.
    names = compiled.positiontup if isinstance(compiled, SQLCompiler) else None
    if names is None:
        raise TypeError(f"{dialect.name}'s parameters are not positional")
    return compiled, names  # type: ignore[return-value]


def _processors(
    compiled: SQLCompiler, names: Sequence[str], dialect: Dialect
) -> list[tuple[int, Processor]]:
    """(position, bind processor) for each parameter whose type converts its value."""
    found = []
    for position, name in enumerate(names):
        # The parameter's type is its column's (a decorator's conversion included), and
        # behind it the dialect's own (SQLite's DATETIME writes text).
        column_type = compiled.binds[name].type
        process: Processor | None = column_type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            found.append((position, process))
    return found


def _convert(ordered: list[Any], processors: list[tuple[int, Processor]]) -> Row:
    for position, process in processors:
        if ordered[position] is not None:
            ordered[position] = process(ordered[position])
    return tuple(ordered)


class BulkInsert:
    """``INSERT INTO table (columns…)`` for ``dialect``, its rows made by :meth:`row`."""

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        statement = insert(table).values({name: bindparam(name) for name in columns})
        compiled, names = _positional(statement, dialect)
        self.sql = str(compiled)
        self._order = [list(columns).index(name) for name in names]
        self._processors = _processors(compiled, names, dialect)

    def row(self, values: Sequence[Any]) -> Row:
        """``values`` in ``columns``' order, as the driver takes them."""
        return _convert([values[index] for index in self._order], self._processors)

    async def run(self, connection: AsyncConnection, rows: list[Row]) -> None:
        if rows:
            await connection.exec_driver_sql(self.sql, rows)


class Prepared:
    """``statement`` for ``dialect``: its SQL, :meth:`parameters` as the driver takes them, and
    for a query, :meth:`record` to read a row the driver gave back.

    Its literals are parameters too (SQLAlchemy binds them): they keep their values.
    """

    def __init__(self, statement: UpdateBase | Select[Any], dialect: Dialect) -> None:
        self.statement = statement
        self._compiled, self._names = _positional(statement, dialect)
        self.sql = str(self._compiled)
        self._processors = _processors(self._compiled, self._names, dialect)
        columns = list(statement.selected_columns) if isinstance(statement, Select) else []
        self._columns = [str(column.key) for column in columns]
        self._readers: list[tuple[int, Processor]] = []
        for position, column in enumerate(columns):
            # The dialect's conversion (SQLite's DATETIME reads text), then a decorator's.
            read = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if read is not None:
                self._readers.append((position, read))

    def parameters(self, values: Mapping[str, Any]) -> Row:
        merged = self._compiled.construct_params(dict(values))
        return _convert([merged[name] for name in self._names], self._processors)

    def record(self, row: Sequence[Any]) -> dict[str, Any]:
        """A row of the query as SQLAlchemy would have read it, by column name."""
        values = list(row)
        for position, read in self._readers:
            values[position] = read(values[position])
        return dict(zip(self._columns, values, strict=True))
