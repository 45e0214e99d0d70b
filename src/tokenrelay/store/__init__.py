"""Durable conversations and Responses: SQLite by default, PostgreSQL by the database URL."""

from __future__ import annotations

import logging

from tokenrelay.config import Settings
from tokenrelay.store.accounts import Accounts
from tokenrelay.store.repository import ConversationRecord, MessageRecord, Page, Store
from tokenrelay.store.responses import ResponseRecord, StoredResponses
from tokenrelay.store.schema import SchemaOutdated

__all__ = [
    "Accounts",
    "ConversationRecord",
    "MessageRecord",
    "Page",
    "ResponseRecord",
    "SchemaOutdated",
    "Store",
    "StoredResponses",
    "database_url",
    "open_store",
]

logger = logging.getLogger("tokenrelay.store")


def database_url(settings: Settings) -> str:
    # load_settings fills this in; Settings built by hand fall back to the working directory.
    return settings.database_url or "sqlite:///tokenrelay.db"


async def open_store(settings: Settings) -> Store:
    """Connect, refuse a schema that is not current, and mark replies a crash cut off.

    Only replies whose lease has run out are marked: another instance may be streaming the
    rest right now (see ``Conversations``, which renews leases and sweeps while running).
    """
    store = await Store.open(database_url(settings))
    try:
        interrupted = await store.interrupt_streaming()
    except BaseException:
        await store.close()
        raise
    if interrupted:
        logger.warning("%d replies were cut off by the last stop; marked interrupted", interrupted)
    return store
