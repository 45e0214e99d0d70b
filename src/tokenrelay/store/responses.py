"""Stored Responses (``POST /v1/responses`` with ``store``), in the conversations' database.

A row is written when a response starts and finished once, when its stream ends: its final
object then. Input items are kept as the client sent them (with ids given here), the output
in the final object, so ``previous_response_id`` and ``input_items`` read them back. Like a
conversation, a response is its owner's only: anyone else's is exactly as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Boolean, Index, String, Table, delete, insert, select, update
from sqlalchemy.orm import Mapped, mapped_column

from tokenrelay import errors
from tokenrelay.store.models import Base, UTCDateTime, utcnow
from tokenrelay.store.repository import Store

StoredItems = list[dict[str, Any]]


class ResponseRow(Base):
    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    background: Mapped[bool] = mapped_column(Boolean)
    stream_id: Mapped[str | None] = mapped_column(String(60))
    # With the Redis stream log: the instance generating it, whose lease tells if it lives.
    instance: Mapped[str | None] = mapped_column(String(40))
    previous_response_id: Mapped[str | None] = mapped_column(String(60))
    # The object's fields that are not output (id, time, the request's settings echoed).
    head: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_items: Mapped[StoredItems] = mapped_column(JSON)
    # The final object, once the response has ended; SQL NULL until then.
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


responses = cast(Table, ResponseRow.__table__)


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    id: str
    owner: str | None
    model: str
    status: str
    background: bool
    stream_id: str | None
    instance: str | None
    previous_response_id: str | None
    head: dict[str, Any]
    input_items: StoredItems
    body: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


def _not_found(response_id: str) -> errors.NotFound:
    return errors.NotFound(f"response {response_id!r} does not exist")


class StoredResponses:
    """Responses in the conversation store's database and write queue."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(
        self,
        *,
        response_id: str,
        owner: str | None,
        model: str,
        status: str,
        background: bool,
        stream_id: str | None,
        instance: str | None,
        previous_response_id: str | None,
        head: dict[str, Any],
        input_items: StoredItems,
    ) -> None:
        now = utcnow()
        values = {
            "id": response_id,
            "owner": owner,
            "model": model,
            "status": status,
            "background": background,
            "stream_id": stream_id,
            "instance": instance,
            "previous_response_id": previous_response_id,
            "head": head,
            "input_items": input_items,
            "body": None,
            "created_at": now,
            "updated_at": now,
        }
        async with self.store._write() as connection:
            await connection.execute(insert(responses).values(**values))

    async def get(self, owner: str | None, response_id: str) -> ResponseRecord:
        owned = responses.c.owner.is_(None) if owner is None else responses.c.owner == owner
        query = select(responses).where(responses.c.id == response_id, owned)
        async with self.store.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            raise _not_found(response_id)
        return ResponseRecord(**row._mapping)

    async def finish(self, response_id: str, body: dict[str, Any]) -> None:
        """Write the final object; a response that has already ended keeps its first one."""
        async with self.store._write() as connection:
            await connection.execute(
                update(responses)
                .where(responses.c.id == response_id, responses.c.body.is_(None))
                .values(status=body["status"], body=body, updated_at=utcnow())
            )

    async def delete(self, owner: str | None, response_id: str) -> ResponseRecord:
        record = await self.get(owner, response_id)
        async with self.store._write() as connection:
            await connection.execute(delete(responses).where(responses.c.id == response_id))
        return record
