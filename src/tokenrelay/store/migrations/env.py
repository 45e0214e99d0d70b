"""Alembic's entry point. tokenrelay always hands it an open connection (see store.schema)."""

from __future__ import annotations

from alembic import context

from tokenrelay.store.models import Base
from tokenrelay.store.schema import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it; batch mode does that for later migrations.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
