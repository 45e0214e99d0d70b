"""Per-user limits out of the box, and every generation a user causes counted against them."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.gateway import serve
from tests.stored import create, post_turn, turn
from tokenrelay.config import Settings, load_settings

DEFAULTS = {
    "requests_per_minute": 60,
    "concurrent_streams": 8,
    "tokens_per_minute": 100_000,
    "tokens_per_day": 2_000_000,
}


def test_a_first_start_has_the_modest_per_user_limits_the_readme_lists() -> None:
    quota = Settings().rate_limits.quota_for("anyone")
    assert quota.model_dump() == DEFAULTS
    assert (
        Settings(rate_limits={"tokens_per_day": 0}).rate_limits.quota_for(None).tokens_per_day
        is None
    )


async def test_fire_and_forget_streams_stop_at_the_default_concurrency(
    http: aiohttp.ClientSession,
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "script": {"first_delay": 60}}
    statuses = []
    # Not tests.gateway.settings, which turns the default limits off.
    async with serve(load_settings(models={"demo": {"provider": "scripted"}})) as gateway:
        for _ in range(DEFAULTS["concurrent_streams"] + 1):
            # The client leaves at once; the stream lingers for its resume grace, slot held.
            async with http.post(f"{gateway.url}/v1/streams", json=body) as response:
                statuses.append(response.status)
                if response.status != 200:
                    code = (await response.json())["error"]["code"]

    assert statuses == [200] * DEFAULTS["concurrent_streams"] + [429]
    assert code == "concurrency_limited"


async def test_a_title_generation_is_admitted_like_the_users_own_requests(
    http: aiohttp.ClientSession, database_url: str
) -> None:
    models = {
        "demo": {"provider": "scripted"},
        "titler": {"provider": "scripted", "options": {"script": {"text": "Lunch in Lyon"}}},
    }
    async with serve(
        database_url=database_url,
        models=models,
        conversations={"title_model": "titler"},
        # One for the new conversation (it counts too), one for the reply.
        rate_limits={"requests_per_minute": 2},
    ) as gateway:
        cid = await create(http, gateway)
        await post_turn(http, gateway, cid, turn("where to eat?", text="Bouchon"))
        await asyncio.sleep(1.0)
        async with http.get(f"{gateway.url}/v1/conversations/{cid}") as response:
            title = (await response.json())["title"]

    # The conversation and the reply took the minute's requests: the title model was refused,
    # not run for free.
    assert title == "where to eat?"
