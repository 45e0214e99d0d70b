from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text

from tests.processes import upgraded
from tokenrelay.client import Client
from tokenrelay.store.engine import create_engine
from tokenrelay.testing.databases import ADMIN_URL, scratch_postgres


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def upstream_client() -> AsyncIterator[Client]:
    """The gateway's own upstream client, for tests that drive a provider directly."""
    client = Client()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session", autouse=True)
async def default_database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Gateways started by tests store into this SQLite file unless a test names another."""
    url = await upgraded(f"sqlite:///{tmp_path_factory.mktemp('db') / 'tokenrelay.db'}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKENRELAY_DATABASE_URL", url)
        # Tests of other features run keyless, subprocesses too; auth tests turn it back on.
        patch.setenv("TOKENRELAY_AUTH__ENABLED", "false")
        yield url


@pytest.fixture(scope="session")
async def postgres_database() -> AsyncIterator[str]:
    """A database of its own on the PostgreSQL server, so concurrent runs never collide."""
    async with scratch_postgres(ADMIN_URL, "tokenrelay_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    # Synchronous, so it may ask for the session's PostgreSQL database only when needed.
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
async def database_url(store_backend: str) -> str:
    """An empty store at the current schema, on each backend."""
    url = await upgraded(store_backend)
    if url.startswith("postgresql"):
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("TRUNCATE messages, conversations, responses"))
        finally:
            await engine.dispose()
    return url
