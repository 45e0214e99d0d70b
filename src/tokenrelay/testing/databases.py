"""A PostgreSQL database of one's own for a test session or a benchmark, dropped afterwards, so
that runs sharing a server never see each other's rows."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url

# The server the PostgreSQL tests and the bench run on, in a database of their own each.
ADMIN_URL = os.environ.get("TOKENRELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def scratch_postgres(admin_url: str, prefix: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on ``admin_url``'s server, named ``prefix`` and a random
    suffix; it is dropped (its connections ended) on the way out."""
    import asyncpg  # the postgres extra

    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(admin_url, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
