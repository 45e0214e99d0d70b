"""Several real ``tokenrelay serve`` processes sharing one Redis and one PostgreSQL database.

``async with instances(http, tmp_path, redis, n) as [a, b, …]:`` starts them on free loopback
ports with a generated config (a ``demo`` scripted model and an ``up`` model on the given fake
upstream) and stops each by its PID on the way out, or leaves it to the test to kill.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.gateway import SSEEvent, read_sse
from tests.processes import ServeProcess, serve_process, upgraded
from tests.redis_server import RedisServer

LEASE = 1.5


def config_text(
    redis: RedisServer, upstream_url: str | None, sections: dict[str, dict[str, Any]]
) -> str:
    lines = [f'redis_url = "{redis.url}"', 'log_level = "warning"', ""]
    lines += ["[models.demo]", 'provider = "scripted"', ""]
    if upstream_url is not None:
        lines += [
            "[models.up]",
            'provider = "openai"',
            f'base_url = "{upstream_url}"',
            'upstream_model = "fake-model"',
            "",
        ]
    sections = {"streams": {"lease": LEASE}, **sections}
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value!r}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines).replace("'", '"')


@contextlib.asynccontextmanager
async def instances(
    http: aiohttp.ClientSession,
    tmp_path: Path,
    redis: RedisServer,
    count: int,
    *,
    database_url: str,
    upstream_url: str | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[list[ServeProcess]]:
    config = tmp_path / "tokenrelay.toml"
    config.write_text(config_text(redis, upstream_url, sections or {}))
    env = {"TOKENRELAY_DATABASE_URL": await upgraded(database_url)}
    async with contextlib.AsyncExitStack() as stack:
        served = [
            await stack.enter_async_context(serve_process(config, env=env)) for _ in range(count)
        ]
        await asyncio.gather(*(one.until_listening(http) for one in served))
        yield served


def script(tokens: int, delay: float) -> dict[str, Any]:
    return {"tokens": [f"w{i} " for i in range(tokens)], "delay": delay}


def native_body(tokens: int = 30, delay: float = 0.05) -> dict[str, Any]:
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": "hi"}],
        "script": script(tokens, delay),
    }


def expected_text(tokens: int) -> str:
    return "".join(f"w{i} " for i in range(tokens))


async def events_until(
    response: aiohttp.ClientResponse, stop: Any, timeout: float = 15
) -> list[SSEEvent]:
    """Events from ``response`` until ``stop(event)`` is true or the stream ends."""
    seen: list[SSEEvent] = []
    async with asyncio.timeout(timeout):
        async for event in read_sse(response):
            seen.append(event)
            if stop(event):
                break
    return seen


def at_id(event_id: int) -> Callable[[SSEEvent], bool]:
    """Stop at the event with this id."""
    return lambda event: event.id == str(event_id)


def ended(event: SSEEvent) -> bool:
    return event.event in ("done", "error")


def text_of(events: list[SSEEvent]) -> str:
    return "".join(e.json()["text"] for e in events if e.event == "token")


def ids_of(events: list[SSEEvent]) -> list[int]:
    return [int(e.id) for e in events if e.id is not None]


def assert_whole(seen: list[SSEEvent], tokens: int) -> None:
    """``seen`` is the whole stream of ``tokens`` tokens: every id once, in order, then done."""
    assert ids_of(seen) == list(range(1, len(seen) + 1))
    assert text_of(seen) == expected_text(tokens)
    assert seen[-1].event == "done", seen[-1]


async def resume(
    http: aiohttp.ClientSession, base: str, stream_id: str, last_id: int, stop: Any = ended
) -> list[SSEEvent]:
    headers = {"Last-Event-ID": str(last_id)}
    async with http.get(f"{base}/v1/streams/{stream_id}", headers=headers) as response:
        assert response.status == 200, await response.text()
        return await events_until(response, stop)


async def hopping(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any], hops: int, step: int
) -> list[SSEEvent]:
    """Start a native stream at ``base``, leave it after ``step`` events and resume it there
    ``hops`` times (a new request each: behind a balancer, maybe another instance), then read
    it to its end; every event seen."""
    async with http.post(f"{base}/v1/streams", json=body) as response:
        stream_id = response.headers["X-Stream-Id"]
        seen = await events_until(response, at_id(step))
    for _ in range(hops):
        last = int(seen[-1].id or 0)
        seen += await resume(http, base, stream_id, last, at_id(last + step))
    return seen + await resume(http, base, stream_id, int(seen[-1].id or 0))


async def replayed_once_back(
    http: aiohttp.ClientSession, base: str, stream_id: str, within: float = 10
) -> list[SSEEvent]:
    """The whole stream from ``base``, asked again until it answers (Redis coming back)."""
    async with asyncio.timeout(within):
        while True:
            async with http.get(f"{base}/v1/streams/{stream_id}") as again:
                if again.status == 200:
                    return await events_until(again, ended)
            await asyncio.sleep(0.2)
