"""``--only ledger``: how long the usage ledger's flush holds the gateway's event loop.

The ledger writes the streams that ended, once a second, in one batch; while the loop runs a
flush's Python, every open stream's next token and every arriving request waits. Measured in
this process on the store tokenrelay opens, as the gateway's own loop runs it: the main
thread's CPU time (``time.thread_time()``, which leaves out the database's own work on its
thread or server) around ``Accounts.record_usage``, for batches of 5 and of 250 rows, 20 ms
apart so each flush starts on caches other work has used, as the gateway's do. The baseline,
measured in the same run, is the same batch through SQLAlchemy (``Store(direct=False)``), as
every flush went before. SQLite on a temporary file, and PostgreSQL on a database of the
bench's own where the server at ``TOKENRELAY_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``) answers.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenrelay.store import schema
from tokenrelay.store.accounts import Accounts, StreamUsage
from tokenrelay.store.engine import create_engine
from tokenrelay.store.repository import Store
from tokenrelay.testing.databases import ADMIN_URL, scratch_postgres

# A quiet gateway's batch, and a busy one's (250 streams ending a second).
BATCHES = (5, 250)
FLUSHES = 40
WARMUP = 5
APART = 0.02


async def measure() -> dict[str, Any]:
    out: dict[str, Any] = {"batches": list(BATCHES)}
    with tempfile.TemporaryDirectory() as folder:
        out["sqlite"] = await _both(f"sqlite:///{Path(folder) / 'ledger.db'}")
    try:
        async with scratch_postgres(ADMIN_URL, "tokenrelay_bench") as url:
            out["postgresql"] = await _both(url)
    except (OSError, ImportError) as exc:
        out["postgresql"] = {"skipped": f"no PostgreSQL server: {exc}"}
    return out


async def _both(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    await schema.upgrade(engine)
    await engine.dispose()
    figures: dict[str, Any] = {}
    for size in BATCHES:
        row: dict[str, Any] = {}
        for name, direct in (("sqlalchemy", False), ("direct", True)):
            store = Store(create_engine(url), direct=direct)
            try:
                row[name] = await _flushes(Accounts(store), size)
            finally:
                await store.close()
        row["x_sqlalchemy"] = row["direct"]["loop_ms_p50"] / row["sqlalchemy"]["loop_ms_p50"]
        figures[str(size)] = row
    return figures


async def _flushes(accounts: Accounts, size: int) -> dict[str, float]:
    loop_ms: list[float] = []
    wall_ms: list[float] = []
    run = secrets.token_hex(4)
    for flush in range(WARMUP + FLUSHES):
        batch = [
            accounts.usage_row(
                StreamUsage(
                    None,
                    None,
                    "bench",
                    f"str_{run}_{flush}_{i}",
                    "complete",
                    1,
                    2,
                    False,
                    datetime.now(UTC),
                )
            )
            for i in range(size)
        ]
        cpu, wall = time.thread_time(), time.perf_counter()
        await accounts.record_usage(batch)
        if flush >= WARMUP:
            loop_ms.append((time.thread_time() - cpu) * 1000)
            wall_ms.append((time.perf_counter() - wall) * 1000)
        await asyncio.sleep(APART)
    return {
        "loop_ms_p50": statistics.median(loop_ms),
        "loop_ms_max": max(loop_ms),
        "wall_ms_p50": statistics.median(wall_ms),
    }
