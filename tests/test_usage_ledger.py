"""The usage ledger's batched insert, on SQLite and PostgreSQL: rows reach the table with every
value as written, read back through the same models the admin usage endpoint reads."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import select

from tokenrelay.limits.ledger import Ledger
from tokenrelay.store.accounts import Accounts, StreamUsage, usage_records
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
