"""Schema migrations, run in-process: users need no ``alembic.ini``.

``tokenrelay db upgrade`` brings a database to this version's schema; the server checks it at
startup and refuses to run on one that is behind (or ahead), naming that command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenrelay.store.engine import WRITE, display_url

# Not alembic's default name, so tokenrelay can share a database with an application's own.
VERSION_TABLE = "tokenrelay_schema_version"
UPGRADE_COMMAND = "tokenrelay db upgrade"
MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaOutdated(RuntimeError):
    """The database is not at the schema this version of tokenrelay needs."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "the package ships no migration"
    return revision


def _current(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, command.downgrade, revision)


async def _run(engine: AsyncEngine, action: Callable[[Config, str], None], revision: str) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config, revision)

    async with engine.connect() as connection:
        connection = await connection.execution_options(**{WRITE: True})
        async with connection.begin():
            await connection.run_sync(run)


async def check(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaOutdated`, naming the command to run, unless the schema is current."""
    at = await current(engine)
    wanted = head()
    if at == wanted:
        return
    where = display_url(engine)
    known = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    if at is not None and at not in known:
        raise SchemaOutdated(
            f"the database {where} has schema revision {at}, newer than this tokenrelay "
            f"knows ({wanted}); upgrade tokenrelay"
        )
    state = "empty" if at is None else f"at revision {at}"
    raise SchemaOutdated(
        f"the database {where} is {state} and this tokenrelay needs revision {wanted}; "
        f"upgrade it with: {UPGRADE_COMMAND}"
    )
