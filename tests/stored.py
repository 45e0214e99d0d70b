"""Helpers for the stored-conversation tests: the HTTP calls they all make, and waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from sqlalchemy import select

from tests.gateway import Gateway, SSEEvent, read_sse
from tokenrelay.store import MessageRecord, Store
from tokenrelay.store.repository import messages as table

WORDS = [f"w{i:03d} " for i in range(400)]


def words(count: int) -> list[str]:
    return WORDS[:count]


def turn(content: str = "hello", **script: Any) -> dict[str, Any]:
    return {"content": content, "script": script}


async def create(http: aiohttp.ClientSession, gateway: Gateway, **body: Any) -> str:
    async with http.post(f"{gateway.url}/v1/conversations", json=body) as response:
        assert response.status == 201, await response.text()
        conversation_id: str = (await response.json())["id"]
    return conversation_id


async def post_turn(
    http: aiohttp.ClientSession, gateway: Gateway, conversation_id: str, body: dict[str, Any]
) -> list[SSEEvent]:
    """Take a turn and read its whole stream."""
    url = f"{gateway.url}/v1/conversations/{conversation_id}/messages"
    async with http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return [event async for event in read_sse(response)]


async def messages(
    http: aiohttp.ClientSession, gateway: Gateway, conversation_id: str
) -> list[dict[str, Any]]:
    url = f"{gateway.url}/v1/conversations/{conversation_id}/messages"
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        data: list[dict[str, Any]] = (await response.json())["data"]
    return data


def text_of(events: list[SSEEvent]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "token")


async def stored_message(store: Store, message_id: str) -> MessageRecord:
    """Read straight from the database, past every API (and every owner check)."""
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(table).where(table.c.id == message_id))).first()
    assert row is not None, f"message {message_id} is not stored"
    return MessageRecord(**row._mapping)


async def all_settled(store: Store, timeout: float = 15.0) -> list[MessageRecord]:
    """Every stored message, once none is ``streaming`` any more."""
    async with asyncio.timeout(timeout):
        while True:
            async with store.engine.connect() as connection:
                rows = (await connection.execute(select(table).order_by(table.c.seq))).all()
            found = [MessageRecord(**row._mapping) for row in rows]
            if all(m.status != "streaming" for m in found):
                return found
            await asyncio.sleep(0.05)


async def settled(store: Store, message_id: str, timeout: float = 8.0) -> MessageRecord:
    """The message once it is no longer ``streaming``."""
    async with asyncio.timeout(timeout):
        while True:
            message = await stored_message(store, message_id)
            if message.status != "streaming":
                return message
            await asyncio.sleep(0.02)
