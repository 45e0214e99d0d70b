"""What one user may store: system prompts, conversations and messages are bounded, and
creating conversations counts against the user's request rate."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.gateway import Gateway, serve
from tests.stored import create, post_turn, turn


async def new_conversation(
    http: aiohttp.ClientSession, gateway: Gateway, **body: Any
) -> tuple[int, str | None]:
    async with http.post(f"{gateway.url}/v1/conversations", json=body) as response:
        payload = await response.json()
        return response.status, (payload.get("error") or {}).get("code")


async def test_a_system_prompt_over_the_limit_is_refused_with_413(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        huge = await new_conversation(http, gateway, system="s" * 990_000)
        fits = await new_conversation(http, gateway, system="s" * 32_000)

    assert huge == (413, "payload_too_large")
    assert fits == (201, None)


async def test_conversations_past_the_per_user_limit_are_refused(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url, limits={"max_conversations_per_user": 3}) as gw:
        answers = [await new_conversation(http, gw) for _ in range(4)]

    assert answers == [(201, None)] * 3 + [(400, "invalid_request")]


async def test_creating_conversations_counts_against_the_request_rate(
    http: aiohttp.ClientSession,
) -> None:
    async with serve(rate_limits={"requests_per_minute": 2}) as gateway:
        answers = [await new_conversation(http, gateway) for _ in range(3)]
        async with http.post(f"{gateway.url}/v1/conversations", json={}) as refused:
            retry_after = refused.headers.get("Retry-After")

    assert answers == [(201, None), (201, None), (429, "rate_limited")]
    assert retry_after is not None


async def test_a_conversation_at_its_message_limit_takes_no_more_turns(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    async with serve(database_url=database_url, limits={"max_messages_per_conversation": 4}) as gw:
        cid = await create(http, gw)
        for content in ("one", "two"):
            await post_turn(http, gw, cid, turn(content, text="ok"))
        url = f"{gw.url}/v1/conversations/{cid}/messages"
        async with http.post(url, json=turn("three", text="ok")) as response:
            third = response.status, (await response.json())["error"]["code"]

    assert third == (400, "invalid_request")
