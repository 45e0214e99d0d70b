"""The store's API: what the wires and the recorder read and write, owner by owner.

Every read of a conversation names its owner: another owner's conversation is exactly as
missing as one that never existed. Rows come back as frozen records, never as live ORM
objects, so nothing lazy-loads behind an ``await``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tokenrelay import errors
from tokenrelay.store import schema
from tokenrelay.store.bulk import BulkInsert, Prepared, Row
from tokenrelay.store.direct import DirectConnection, direct_connection
from tokenrelay.store.engine import WRITE, create_engine
from tokenrelay.store.models import ConversationRow, MessageRow, MessageStatus, utcnow

T = TypeVar("T")
# A message's content parts as JSON objects; the store keeps them as it is given them.
StoredParts = list[dict[str, Any]]
# ``(role, content)`` or ``(role, content, parts)``.
NewMessage = tuple[str, str] | tuple[str, str, StoredParts | None]
REOPENABLE = ("streaming", "interrupted")
# Leases renewed per statement: a bounded IN list whatever the number of live replies.
RENEW_BATCH = 500
conversations = cast(Table, ConversationRow.__table__)
messages = cast(Table, MessageRow.__table__)
# Replies left streaming past their lease (Store.interrupt_streaming).
_INTERRUPT_LAPSED = (
    update(messages)
    .where(
        messages.c.status == "streaming",
        or_(messages.c.lease_until.is_(None), messages.c.lease_until < bindparam("now")),
    )
    .values(status="interrupted", updated_at=bindparam("now"))
)


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: str
    owner: str | None
    title: str | None
    model: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MessageRecord:
    seq: int
    id: str
    conversation_id: str
    role: str
    content: str
    status: str
    error_code: str | None
    finish_reason: str | None
    model: str | None
    stream_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    created_at: datetime
    updated_at: datetime
    lease_until: datetime | None = None
    parts: StoredParts | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def _owned_by(owner: str | None) -> ColumnElement[bool]:
    column = conversations.c.owner
    return column.is_(None) if owner is None else column == owner


def _not_found(conversation_id: str) -> errors.NotFound:
    return errors.NotFound(f"conversation {conversation_id!r} does not exist")


class Store:
    """Conversations and messages in one SQL database (see :mod:`tokenrelay.store.engine`)."""

    def __init__(self, engine: AsyncEngine, *, direct: bool = True) -> None:
        """``direct``: batches of inserts on a connection of their own (store.direct); off,
        through SQLAlchemy like every other write (``make bench`` measures one beside the other)."""
        self.engine = engine
        # SQLite has one writer at a time. Queued here, writers take turns at once; left to
        # SQLite's busy handler they would poll for the lock with sleeps of up to 100 ms.
        self._writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # Batches of inserts go around SQLAlchemy's per-write path (store.direct says why).
        self._direct: DirectConnection | None = direct_connection(engine) if direct else None
        self._sweep = Prepared(_INTERRUPT_LAPSED, engine.dialect)

    @classmethod
    async def open(cls, url: str, *, check_schema: bool = True) -> Store:
        """Connect; with ``check_schema``, refuse a database whose schema is not current."""
        engine = create_engine(url)
        try:
            if check_schema:
                await schema.check(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def insert_many(self, bulk: BulkInsert, rows: list[Row]) -> None:
        """``rows`` (made by ``bulk.row``) into ``bulk``'s table in one transaction."""
        if self._direct is None:
            async with self._write() as connection:
                await bulk.run(connection, rows)
            return
        # The store's writers take turns: the direct connection too (on SQLite).
        async with self._writer or contextlib.nullcontext():
            await self._direct.insert_many(bulk.sql, rows)

    async def read_one(
        self, query: Prepared, values: Mapping[str, Any], *, background: bool = False
    ) -> dict[str, Any] | None:
        """The first row of ``query``, by column name, or None.

        ``background``, for a read no request waits for: on the direct connection where there
        is one, a step on the loop instead of a dozen, queued behind the ledger's writes (on
        SQLite, on a thread of the lowest priority). Otherwise a pooled connection of its own,
        so that reads a request waits for go in parallel.
        """
        if self._direct is None or not background:
            async with self.engine.connect() as connection:
                row = (await connection.execute(query.statement, dict(values))).first()
            return None if row is None else dict(row._mapping)
        raw = await self._direct.fetch_one(query.sql, query.parameters(values))
        return None if raw is None else query.record(raw)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._writer or contextlib.nullcontext():
            async with self.engine.connect() as connection:
                connection = await connection.execution_options(**{WRITE: True})
                async with connection.begin():
                    yield connection

    # Conversations ------------------------------------------------------------------------

    async def create_conversation(
        self,
        owner: str | None,
        *,
        title: str | None = None,
        model: str | None = None,
        system: str | None = None,
        most: int | None = None,
    ) -> ConversationRecord:
        """A new conversation; refused when ``owner`` already has ``most`` of them."""
        now = utcnow()
        record = ConversationRecord(new_id("conv"), owner, title, model, now, now)
        async with self._write() as connection:
            if most is not None:
                count = select(func.count()).select_from(conversations).where(_owned_by(owner))
                if (await connection.scalar(count) or 0) >= most:
                    raise errors.InvalidRequest(
                        f"there are {most} conversations already (the limit); delete some first"
                    )
            await connection.execute(insert(conversations).values(**_fields(record)))
            if system:
                await connection.execute(
                    insert(messages).values(
                        _new_message(record.id, "system", system, "complete", now)
                    )
                )
        return record

    async def get_conversation(self, owner: str | None, conversation_id: str) -> ConversationRecord:
        async with self.engine.connect() as connection:
            return await _conversation(connection, owner, conversation_id)

    async def list_conversations(
        self, owner: str | None, *, limit: int, after: str | None = None
    ) -> Page[ConversationRecord]:
        """Newest first; ``after`` is the id of the last conversation of the previous page."""
        created, ident = conversations.c.created_at, conversations.c.id
        query = select(conversations).where(_owned_by(owner))
        async with self.engine.connect() as connection:
            if after is not None:
                try:
                    mark = await _conversation(connection, owner, after)
                except errors.NotFound:
                    raise errors.InvalidRequest(f"after: {_not_found(after).message}") from None
                query = query.where(
                    or_(
                        created < mark.created_at,
                        and_(created == mark.created_at, ident < mark.id),
                    )
                )
            query = query.order_by(created.desc(), ident.desc()).limit(limit + 1)
            rows = (await connection.execute(query)).all()
        items = [ConversationRecord(**row._mapping) for row in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)

    async def update_conversation(
        self, owner: str | None, conversation_id: str, **fields: Any
    ) -> ConversationRecord:
        async with self._write() as connection:
            await _conversation(connection, owner, conversation_id)
            await connection.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(**fields, updated_at=utcnow())
            )
            return await _conversation(connection, owner, conversation_id)

    async def delete_conversation(self, owner: str | None, conversation_id: str) -> list[str]:
        """Delete it; the ids of the streams of its replies still streaming, to stop them."""
        async with self._write() as connection:
            await _conversation(connection, owner, conversation_id)
            streaming = await connection.execute(
                select(messages.c.stream_id).where(
                    messages.c.conversation_id == conversation_id,
                    messages.c.status == "streaming",
                    messages.c.stream_id.is_not(None),
                )
            )
            stream_ids = [row[0] for row in streaming]
            # Also done by the foreign key's ON DELETE CASCADE; explicit so it never depends
            # on SQLite's per-connection foreign_keys pragma.
            await connection.execute(
                delete(messages).where(messages.c.conversation_id == conversation_id)
            )
            await connection.execute(
                delete(conversations).where(conversations.c.id == conversation_id)
            )
        return stream_ids

    async def set_title(self, conversation_id: str, title: str, *, replacing: str | None) -> bool:
        """Set the title only while it is still ``replacing`` (so a user's rename wins)."""
        current = conversations.c.title
        unchanged = current.is_(None) if replacing is None else current == replacing
        async with self._write() as connection:
            result = await connection.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id, unchanged)
                .values(title=title)
            )
        return bool(result.rowcount)

    # Messages -----------------------------------------------------------------------------

    async def list_messages(
        self,
        owner: str | None,
        conversation_id: str,
        *,
        limit: int,
        after: str | None = None,
        newest_first: bool = False,
    ) -> Page[MessageRecord]:
        """In conversation order (or newest first); ``after`` is a message id from a page."""
        seq = messages.c.seq
        query = select(messages).where(messages.c.conversation_id == conversation_id)
        async with self.engine.connect() as connection:
            await _conversation(connection, owner, conversation_id)
            if after is not None:
                mark = await connection.scalar(
                    select(seq).where(
                        messages.c.conversation_id == conversation_id, messages.c.id == after
                    )
                )
                if mark is None:
                    raise errors.InvalidRequest(f"after: message {after!r} does not exist")
                query = query.where(seq < mark if newest_first else seq > mark)
            query = query.order_by(seq.desc() if newest_first else seq).limit(limit + 1)
            rows = (await connection.execute(query)).all()
        items = [MessageRecord(**row._mapping) for row in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)

    async def system_messages(self, conversation_id: str) -> list[MessageRecord]:
        query = (
            select(messages)
            .where(messages.c.conversation_id == conversation_id, messages.c.role == "system")
            .order_by(messages.c.seq)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [MessageRecord(**row._mapping) for row in rows]

    async def history(
        self, conversation_id: str, *, page: int = 200
    ) -> AsyncGenerator[MessageRecord, None]:
        """User and assistant messages, newest first, read a page at a time.

        The caller stops iterating once it has enough, so a long conversation is never read
        (nor held in memory) whole.
        """
        before: int | None = None
        while True:
            query = select(messages).where(
                messages.c.conversation_id == conversation_id, messages.c.role != "system"
            )
            if before is not None:
                query = query.where(messages.c.seq < before)
            query = query.order_by(messages.c.seq.desc()).limit(page)
            async with self.engine.connect() as connection:
                rows = (await connection.execute(query)).all()
            for row in rows:
                yield MessageRecord(**row._mapping)
            if len(rows) < page:
                return
            before = rows[-1].seq

    async def count_messages(self, conversation_id: str) -> int:
        async with self.engine.connect() as connection:
            query = select(func.count()).where(messages.c.conversation_id == conversation_id)
            count: int = await connection.scalar(query) or 0
        return count

    async def add_messages(
        self,
        conversation_id: str,
        turns: list[NewMessage],
        *,
        model: str | None = None,
        fallback_title: str | None = None,
    ) -> list[MessageRecord]:
        """Append complete messages (``(role, content)`` or ``(role, content, parts)``) in order.

        ``fallback_title`` becomes the title of a conversation that has none yet.
        """
        now = utcnow()
        values = []
        for role, body, *parts in turns:
            value = _new_message(conversation_id, role, body, "complete", now)
            value.update(
                model=model if role == "assistant" else None, parts=next(iter(parts), None)
            )
            values.append(value)
        async with self._write() as connection:
            inserted = await connection.execute(
                insert(messages).returning(messages.c.seq, sort_by_parameter_order=True), values
            )
            for value, seq in zip(values, inserted.scalars(), strict=True):
                value["seq"] = seq
            bump = update(conversations).where(conversations.c.id == conversation_id)
            await connection.execute(bump.values(updated_at=now))
            if fallback_title is not None:
                await connection.execute(
                    bump.where(conversations.c.title.is_(None)).values(title=fallback_title)
                )
        return [MessageRecord(**value) for value in values]

    async def start_reply(
        self, conversation_id: str, *, model: str, stream_id: str, lease: float
    ) -> MessageRecord:
        """The assistant's message, ``streaming`` and empty until the recorder fills it.

        It is leased to this instance for ``lease`` seconds; :meth:`renew_replies` extends that.
        """
        now = utcnow()
        value = _new_message(conversation_id, "assistant", "", "streaming", now)
        value.update(model=model, stream_id=stream_id, lease_until=now + timedelta(seconds=lease))
        async with self._write() as connection:
            result = await connection.execute(insert(messages).values(**value))
        value["seq"] = _primary_key(result)
        return MessageRecord(**value)

    async def checkpoint(
        self, message_id: str, content: str, parts: StoredParts | None = None
    ) -> None:
        """Save the text (and parts) so far of a reply that is still streaming."""
        async with self._write() as connection:
            await connection.execute(
                update(messages)
                .where(messages.c.id == message_id, messages.c.status.in_(REOPENABLE))
                .values(content=content, parts=parts, status="streaming", updated_at=utcnow())
            )

    async def renew_replies(self, message_ids: Collection[str], lease: float) -> None:
        """Extend this instance's leases on the replies it is streaming."""
        until = utcnow() + timedelta(seconds=lease)
        ids = list(message_ids)
        if not ids:
            return
        async with self._write() as connection:
            for start in range(0, len(ids), RENEW_BATCH):
                await connection.execute(
                    update(messages)
                    # A reply another instance took for lost while this one could not reach
                    # the database (its lease ran out) is alive after all: it is taken back.
                    .where(
                        messages.c.id.in_(ids[start : start + RENEW_BATCH]),
                        messages.c.status.in_(REOPENABLE),
                    )
                    .values(lease_until=until, status="streaming")
                )

    async def finish_reply(
        self,
        message_id: str,
        *,
        content: str,
        status: MessageStatus,
        parts: StoredParts | None = None,
        error_code: str | None = None,
        finish_reason: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        now = utcnow()
        async with self._write() as connection:
            conversation_id = await connection.scalar(
                update(messages)
                .where(messages.c.id == message_id)
                .values(
                    content=content,
                    parts=parts,
                    status=status,
                    error_code=error_code,
                    finish_reason=finish_reason,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    updated_at=now,
                )
                .returning(messages.c.conversation_id)
            )
            if conversation_id is not None:
                await connection.execute(
                    update(conversations)
                    .where(conversations.c.id == conversation_id)
                    .values(updated_at=now)
                )

    async def interrupt_streaming(self) -> int:
        """Mark ``interrupted`` the replies left ``streaming`` past their lease, keeping their text.

        Their instance stopped (a crash, a kill -9) without ending them; replies that live
        instances are streaming keep renewing their leases and are left alone. Every instance
        runs this every third of a lease, busy or idle: on the direct connection it is one step.
        """
        values = {"now": utcnow()}
        if self._direct is None:
            async with self._write() as connection:
                result = await connection.execute(self._sweep.statement, values)
            return int(result.rowcount)
        async with self._writer or contextlib.nullcontext():
            return await self._direct.execute(self._sweep.sql, self._sweep.parameters(values))


async def _conversation(
    connection: AsyncConnection, owner: str | None, conversation_id: str
) -> ConversationRecord:
    row = (
        await connection.execute(
            select(conversations).where(conversations.c.id == conversation_id, _owned_by(owner))
        )
    ).first()
    if row is None:
        raise _not_found(conversation_id)
    return ConversationRecord(**row._mapping)


def _primary_key(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _fields(record: ConversationRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def _new_message(
    conversation_id: str, role: str, content: str, status: MessageStatus, now: datetime
) -> dict[str, Any]:
    return {
        "id": new_id("msg"),
        "conversation_id": conversation_id,
        "role": role,
        "content": content,
        "status": status,
        "error_code": None,
        "finish_reason": None,
        "model": None,
        "stream_id": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "created_at": now,
        "updated_at": now,
        "parts": None,
    }
