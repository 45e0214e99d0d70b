"""The usage ledger's batched insert, on SQLite and PostgreSQL: rows reach the table with every
value as written, read back through the same models the admin usage endpoint reads."""

from __future__ import annotations

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
        ledger = Ledger(accounts)
        ledger.add(StreamUsage("ann", "key_1", "m1", "str_a", "complete", 12, 30, False, first))
        ledger.add(StreamUsage(None, None, "m2", "str_b", "error", 0, 7, True, later))
        for i in range(600):  # more than one batch of 500
            ledger.add(StreamUsage("bob", None, "m1", f"str_{i}", "complete", 1, 2, False, first))
        await ledger.flush()

        async with store.engine.connect() as connection:
            table = usage_records.c
            query = select(usage_records).where(table.stream_id.in_(["str_a", "str_b"]))
            rows = {row.stream_id: row for row in (await connection.execute(query)).all()}
        a, b = rows["str_a"], rows["str_b"]
        assert (a.owner, a.key_id, a.model, a.status) == ("ann", "key_1", "m1", "complete")
        assert (a.prompt_tokens, a.completion_tokens, a.estimated) == (12, 30, False)
        assert a.created_at == first
        assert (b.owner, b.key_id, b.status, b.estimated) == (None, None, "error", True)
        assert b.created_at == later
        assert b.created_at.tzinfo is not None

        totals = {row.user: row for row in await accounts.usage(user=None)}
        assert totals["bob"].requests == 600
        assert (totals["bob"].prompt_tokens, totals["bob"].completion_tokens) == (600, 1200)
        assert totals[None].estimated_requests == 1
        since = await accounts.usage(since=datetime(2026, 12, 2, tzinfo=UTC), user=None)
        assert [(row.user, row.requests) for row in since] == [(None, 1)]
    finally:
        await store.close()
