"""The usage ledger's batched insert, on SQLite and PostgreSQL: rows reach the table with every
value as written, read back through the same models the admin usage endpoint reads."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from tests.processes import upgraded
from tokenrelay.limits.ledger import Ledger
from tokenrelay.store.accounts import Accounts, StreamUsage, usage_records
from tokenrelay.store.direct import LOWEST_PRIORITY, HeldConnection, SQLiteThread
from tokenrelay.store.repository import Store


async def test_a_batch_of_usage_rows_is_stored_as_written(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        accounts = Accounts(store)
        # Timestamps in two zones and with no microseconds: stored as the same UTC instants.
        first = datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC)
        later = datetime(2026, 12, 2, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=9)))
        # The session's PostgreSQL database keeps other tests' rows: names of this test's own.
        run = secrets.token_hex(4)
        ann, bob, a_id, b_id = f"ann-{run}", f"bob-{run}", f"str_a{run}", f"str_b{run}"
        ledger = Ledger(accounts)
        ledger.add(StreamUsage(ann, "key_1", "m1", a_id, "complete", 12, 30, False, first))
        ledger.add(StreamUsage(None, None, "m2", b_id, "error", 0, 7, True, later))
        for i in range(600):  # more than one batch of 500
            ledger.add(
                StreamUsage(bob, None, "m1", f"str_{run}{i}", "complete", 1, 2, False, later)
            )
        await ledger.flush()

        async with store.engine.connect() as connection:
            table = usage_records.c
            query = select(usage_records).where(table.stream_id.in_([a_id, b_id]))
            rows = {row.stream_id: row for row in (await connection.execute(query)).all()}
        a, b = rows[a_id], rows[b_id]
        assert (a.owner, a.key_id, a.model, a.status) == (ann, "key_1", "m1", "complete")
        assert (a.prompt_tokens, a.completion_tokens, a.estimated) == (12, 30, False)
        assert a.created_at == first
        assert (b.owner, b.key_id, b.status, b.estimated) == (None, None, "error", True)
        assert b.created_at == later
        assert b.created_at.tzinfo is not None

        [totals] = await accounts.usage(user=bob)
        assert (totals.requests, totals.estimated_requests) == (600, 0)
        assert (totals.prompt_tokens, totals.completion_tokens) == (600, 1200)
        # The times are compared as instants: ann's row is before the day bob's are in.
        day = datetime(2026, 12, 2, tzinfo=UTC)
        assert await accounts.usage(since=day, user=ann) == []
        assert [row.requests for row in await accounts.usage(since=day, user=bob)] == [600]
        assert [row.requests for row in await accounts.usage(until=day, user=ann)] == [1]
    finally:
        await store.close()


def _usage(owner: str, stream_id: str, model: str = "m1") -> StreamUsage:
    return StreamUsage(owner, None, model, stream_id, "complete", 1, 2, False, datetime.now(UTC))


async def _requests_of(accounts: Accounts, owner: str) -> int:
    return sum(row.requests for row in await accounts.usage(user=owner))


@asynccontextmanager
async def _accounts(url: str) -> AsyncIterator[tuple[Store, Accounts, str]]:
    """The store at ``url``, its accounts, and an owner's name no other test uses."""
    store = await Store.open(url)
    try:
        yield store, Accounts(store), f"owner-{secrets.token_hex(4)}"
    finally:
        await store.close()


async def test_a_batch_the_database_refuses_writes_none_of_its_rows_and_the_writer_goes_on(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _accounts(database_url) as (_, accounts, owner):
        ledger = Ledger(accounts)
        ledger.add(_usage(owner, f"str_ok{owner}"))
        await ledger.flush()
        # A row the table refuses (its model is NOT NULL), between two good ones.
        ledger.add(_usage(owner, f"str_a{owner}"))
        ledger.add(_usage(owner, f"str_bad{owner}", model=None))  # type: ignore[arg-type]
        ledger.add(_usage(owner, f"str_b{owner}"))
        await ledger.flush()
        assert "writing 3 usage rows failed" in caplog.text
        # All or nothing: neither good row of the refused batch is in the table.
        assert await _requests_of(accounts, owner) == 1
        # The writer's connection is usable after the failure.
        await accounts.record_usage([accounts.usage_row(_usage(owner, f"str_c{owner}"))])
        assert await _requests_of(accounts, owner) == 2


async def test_the_ledger_takes_its_turn_among_the_stores_other_writers(database_url: str) -> None:
    """On SQLite one writer at a time: batches on the ledger's own connection and the store's
    writes through SQLAlchemy interleave without a "database is locked"."""
    async with _accounts(database_url) as (store, accounts, owner):

        async def batches() -> None:
            for i in range(20):
                rows = [accounts.usage_row(_usage(owner, f"str_{i}_{j}{owner}")) for j in range(5)]
                await accounts.record_usage(rows)

        async def conversations() -> None:
            for _ in range(20):
                await store.create_conversation(owner, title="t")

        await asyncio.gather(batches(), conversations(), batches())
        assert await _requests_of(accounts, owner) == 200
        assert len((await store.list_conversations(owner, limit=100)).items) == 20


@pytest.mark.skipif(sys.platform != "linux", reason="niceness is per thread on Linux only")
async def test_the_sqlite_writer_yields_the_cpu_to_the_event_loop(tmp_path: Path) -> None:
    url = await upgraded(f"sqlite:///{tmp_path / 'store.db'}")
    async with _accounts(url) as (store, accounts, owner):
        ledger = Ledger(accounts)
        ledger.add(_usage(owner, f"str_1{owner}"))
        await ledger.flush()
        writer = store._direct
        assert isinstance(writer, SQLiteThread)
        loop = asyncio.get_running_loop()
        # ``who`` 0 is the calling thread: the writer's own, then the loop's.
        nice = await loop.run_in_executor(writer._thread, os.getpriority, os.PRIO_PROCESS, 0)
        assert nice == LOWEST_PRIORITY
        assert os.getpriority(os.PRIO_PROCESS, 0) < LOWEST_PRIORITY
        assert await _requests_of(accounts, owner) == 1


async def test_a_held_postgres_connection_that_dies_is_replaced(postgres_database: str) -> None:
    async with _accounts(await upgraded(postgres_database)) as (store, accounts, owner):
        ledger = Ledger(accounts)
        ledger.add(_usage(owner, f"str_1{owner}"))
        await ledger.flush()
        # The server ends the writer's session, as a restart or an idle timeout would.
        held = store._direct
        assert isinstance(held, HeldConnection) and held._connection is not None
        raw = await held._connection.get_raw_connection()
        pid = raw.driver_connection.get_server_pid()  # type: ignore[union-attr]
        async with store.engine.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        ledger.add(_usage(owner, f"str_2{owner}"))
        await ledger.flush()  # fails on the dead connection, and keeps the row
        await ledger.flush()
        assert await _requests_of(accounts, owner) == 2


async def test_closing_the_ledger_mid_write_stores_each_row_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shutdown comes while a batch is being written (here: committed, its answer not yet
    back): the batch is finished, not cut off and written again by the last flush."""
    committed = asyncio.Event()
    insert_many = Store.insert_many

    async def slow_answer(self: Store, *args: Any) -> None:
        await insert_many(self, *args)
        committed.set()
        await asyncio.sleep(0.2)

    monkeypatch.setattr(Store, "insert_many", slow_answer)
    async with _accounts(database_url) as (_, accounts, owner):
        ledger = Ledger(accounts, interval=0.01)
        ledger.start()
        for i in range(3):
            ledger.add(_usage(owner, f"str_{i}{owner}"))
        await asyncio.wait_for(committed.wait(), 5)
        await ledger.aclose()
        assert await _requests_of(accounts, owner) == 3
