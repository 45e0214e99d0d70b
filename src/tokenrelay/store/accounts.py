"""Users, API keys and the usage ledger: the tables behind ``tokenrelay.auth`` and the limits.

A key is stored as its SHA-256 hash, never as itself; what a person recognises it by is its
visible ``prefix``. Usage is one row per admitted stream (tokens as the provider reported them,
or as estimated when it reported none), summed per user for the admin usage endpoint.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Mapped, mapped_column

from tokenrelay.store.bulk import BulkInsert, Prepared, Row
from tokenrelay.store.models import Base, UTCDateTime, utcnow
from tokenrelay.store.repository import Store

QUOTA_FIELDS = ("requests_per_minute", "concurrent_streams", "tokens_per_minute", "tokens_per_day")


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_owner", "owner"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(200), ForeignKey("users.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    # Space-separated, as OAuth writes scopes.
    scopes: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    concurrent_streams: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_created_owner", "created_at", "owner"),)

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    owner: Mapped[str | None] = mapped_column(String(200))
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    stream_id: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # True when the provider reported no usage and the counts are the gateway's estimate.
    estimated: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


users = cast(Table, User.__table__)
api_keys = cast(Table, ApiKey.__table__)
usage_records = cast(Table, UsageRecord.__table__)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    prefix: str
    key_hash: str
    owner: str
    name: str | None
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    # Per-key overrides of the user's limits, ``None`` where the key keeps them.
    limits: dict[str, int | None]

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """One admitted stream's tokens, as the ledger writes them."""

    owner: str | None
    key_id: str | None
    model: str
    stream_id: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    created_at: datetime


_USAGE_COLUMNS = [field.name for field in fields(StreamUsage)]
# A row's values as one tuple, in _USAGE_COLUMNS' order (attrgetter builds it in C).
_usage_values = operator.attrgetter(*_USAGE_COLUMNS)


@dataclass(frozen=True, slots=True)
class UserUsage:
    user: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    estimated_requests: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _key(fields: Mapping[Any, Any]) -> KeyRecord:
    return KeyRecord(
        id=fields["id"],
        prefix=fields["prefix"],
        key_hash=fields["key_hash"],
        owner=fields["owner"],
        name=fields["name"],
        scopes=tuple(fields["scopes"].split()),
        created_at=fields["created_at"],
        expires_at=fields["expires_at"],
        revoked_at=fields["revoked_at"],
        limits={name: fields[name] for name in QUOTA_FIELDS},
    )


class Accounts:
    """Users, keys and usage, in the conversation store's database and write queue."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._insert_usage = BulkInsert(usage_records, _USAGE_COLUMNS, store.engine.dialect)
        by_hash = select(api_keys).where(api_keys.c.key_hash == bindparam("key_hash"))
        self._key_by_hash = Prepared(by_hash, store.engine.dialect)

    async def ensure_user(self, user_id: str) -> None:
        """Create the user unless it exists (users appear on first use)."""
        async with self.store._write() as connection:
            await _ensure_user(connection, user_id)

    async def add_key(
        self,
        *,
        key_id: str,
        prefix: str,
        key_hash: str,
        owner: str,
        scopes: Sequence[str],
        name: str | None = None,
        expires_at: datetime | None = None,
        limits: dict[str, int | None] | None = None,
    ) -> KeyRecord:
        values: dict[str, Any] = {
            "id": key_id,
            "prefix": prefix,
            "key_hash": key_hash,
            "owner": owner,
            "name": name,
            "scopes": " ".join(scopes),
            "created_at": utcnow(),
            "expires_at": expires_at,
            "revoked_at": None,
        }
        values.update({field: (limits or {}).get(field) for field in QUOTA_FIELDS})
        async with self.store._write() as connection:
            await _ensure_user(connection, owner)
            await connection.execute(insert(api_keys).values(**values))
            row = (await connection.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
        return _key(row._mapping)

    async def key_by_hash(self, key_hash: str, *, background: bool = False) -> KeyRecord | None:
        """``background``: a key read again before its cache runs out, which no request waits
        for, goes on the store's own connection (:meth:`Store.read_one`); a request's lookup
        takes a pooled connection of its own, so a burst of new keys is read in parallel."""
        values = {"key_hash": key_hash}
        fields = await self.store.read_one(self._key_by_hash, values, background=background)
        return None if fields is None else _key(fields)

    async def list_keys(
        self, *, owner: str | None = None, include_revoked: bool = False
    ) -> list[KeyRecord]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if owner is not None:
            query = query.where(api_keys.c.owner == owner)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self.store.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_key(row._mapping) for row in rows]

    async def revoke_key(self, key: str, *, by_prefix: bool = False) -> KeyRecord | None:
        """Revoke the key with this id (or, ``by_prefix``, the one key with this prefix)."""
        match = api_keys.c.id == key
        if by_prefix:
            match = or_(match, api_keys.c.prefix == key)
        async with self.store._write() as connection:
            rows = (await connection.execute(select(api_keys).where(match))).all()
            if len(rows) != 1:
                return None
            key_id = rows[0].id
            await connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = (await connection.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
        return _key(row._mapping)

    async def any_usable_key(self) -> bool:
        now = utcnow()
        query = (
            select(api_keys.c.id)
            .where(
                api_keys.c.revoked_at.is_(None),
                or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
            )
            .limit(1)
        )
        async with self.store.engine.connect() as connection:
            return (await connection.scalar(query)) is not None

    def usage_row(self, usage: StreamUsage) -> Row:
        """``usage`` converted for :meth:`record_usage` now, not while a batch is written."""
        return self._insert_usage.row(_usage_values(usage))

    async def record_usage(self, rows: list[Row]) -> None:
        """Write rows made by :meth:`usage_row`, in one statement."""
        if not rows:
            return
        await self.store.insert_many(self._insert_usage, rows)

    async def usage(
        self, *, since: datetime | None = None, until: datetime | None = None, user: str | None
    ) -> list[UserUsage]:
        """Totals per user, most tokens first; ``user`` narrows them to one."""
        table = usage_records.c
        total = func.sum(table.prompt_tokens + table.completion_tokens)
        query = select(
            table.owner,
            func.count(),
            func.coalesce(func.sum(table.prompt_tokens), 0),
            func.coalesce(func.sum(table.completion_tokens), 0),
            func.count().filter(table.estimated.is_(True)),
        ).group_by(table.owner)
        if since is not None:
            query = query.where(table.created_at >= since)
        if until is not None:
            query = query.where(table.created_at < until)
        if user is not None:
            query = query.where(table.owner == user)
        query = query.order_by(total.desc(), table.owner)
        async with self.store.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            UserUsage(owner, int(count), int(prompt), int(completion), int(estimated))
            for owner, count, prompt, completion, estimated in rows
        ]


async def _ensure_user(connection: AsyncConnection, user_id: str) -> None:
    values = {"id": user_id, "created_at": utcnow()}
    dialect = connection.dialect.name
    if dialect == "postgresql":
        await connection.execute(
            postgresql.insert(users).values(**values).on_conflict_do_nothing(index_elements=["id"])
        )
    else:
        await connection.execute(
            sqlite.insert(users).values(**values).on_conflict_do_nothing(index_elements=["id"])
        )
