"""When Redis fails: the configured policy, never a 500, never a hang, and recovery by itself.

Every test here has a ``redis-server`` of its own and stops, freezes or restarts it by PID
while gateways are using it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import connect

from tests.gateway import Gateway, read_sse, serve
from tests.processes import serve_process
from tests.redis_server import RedisServer, redis_server

ASK = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def shared(server: RedisServer, **limits: Any) -> dict[str, Any]:
    limits.setdefault("concurrent_streams", 5)
    limits.setdefault("redis_timeout", 0.2)
    limits.setdefault("key_prefix", "faults-" + secrets.token_hex(6))
    return {"redis_url": server.url, "rate_limits": limits}


async def ask(
    http: aiohttp.ClientSession, gateway: Gateway, **script: Any
) -> tuple[int, dict[str, str], bytes, float]:
    started = time.monotonic()
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=ASK | {"script": script}
    ) as response:
        return (
            response.status,
            dict(response.headers),
            await response.read(),
            (time.monotonic() - started),
        )


async def until_admitted(http: aiohttp.ClientSession, gateway: Gateway, within: float) -> float:
    """Seconds until a request is admitted again."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while (await ask(http, gateway))[0] != 200:
            await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_with_redis_down_requests_fail_closed_fast_with_503_then_recover(
    http: aiohttp.ClientSession,
) -> None:
    async with redis_server() as redis, serve(**shared(redis)) as gateway:
        before = await ask(http, gateway)
        await redis.stop()
        down = [await ask(http, gateway) for _ in range(3)]
        message = {"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        async with http.post(f"{gateway.url}/v1/messages", json=message) as response:
            anthropic = response.status, await response.json()
        async with connect(gateway.ws_url + "/ws/chat") as ws:
            await ws.send('{"content": "hi"}')
            socket_error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        await redis.start()
        recovered_in = await until_admitted(http, gateway, within=10)

    assert before[0] == 200
    for status, headers, raw, took in down:
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert orjson.loads(raw)["error"]["code"] == "limiter_unavailable"
        # Nothing about the backend reaches the client.
        assert b"redis" not in raw.lower() and b"connect" not in raw.lower()
        assert took < 2
    assert anthropic[0] == 503 and anthropic[1]["type"] == "error"
    assert socket_error["code"] == "limiter_unavailable"
    assert recovered_in < 10


async def test_a_frozen_redis_costs_a_request_its_timeout_not_a_hang(
    http: aiohttp.ClientSession,
) -> None:
    async with redis_server() as redis, serve(**shared(redis)) as gateway:
        assert (await ask(http, gateway))[0] == 200
        redis.pause()
        try:
            frozen = [await ask(http, gateway) for _ in range(3)]
        finally:
            redis.resume()
        recovered_in = await until_admitted(http, gateway, within=10)

    for status, _, raw, took in frozen:
        assert status == 503
        assert orjson.loads(raw)["error"]["code"] == "limiter_unavailable"
        # redis_timeout is 0.2 s; generous bounds for a loaded machine.
        assert took < 3
    assert recovered_in < 10


async def test_fail_open_admits_without_limits_while_redis_is_down(
    http: aiohttp.ClientSession,
) -> None:
    async with redis_server() as redis:
        overrides = shared(redis, concurrent_streams=1, redis_failure="fail_open")
        async with serve(**overrides) as gateway:
            await redis.stop()
            opened = [
                await http.post(f"{gateway.url}/v1/chat/completions", json=ASK | {"script": s})
                for s in ({"hang_after": 0},) * 3
            ]
            statuses = [response.status for response in opened]
            await redis.start()
            # Back up, the limit holds again (the streams let in meanwhile hold no lease).
            held = await http.post(
                f"{gateway.url}/v1/chat/completions", json=ASK | {"script": {"hang_after": 0}}
            )
            refused = (await ask(http, gateway))[0]
            for response in [*opened, held]:
                response.close()

    assert statuses == [200, 200, 200]
    assert held.status == 200
    assert refused == 429


async def test_streams_admitted_before_redis_failed_end_normally(
    http: aiohttp.ClientSession,
) -> None:
    words = [f"w{i} " for i in range(20)]
    async with redis_server() as redis, serve(**shared(redis)) as gateway:
        async with http.post(
            f"{gateway.url}/v1/streams", json=ASK | {"script": {"tokens": words, "delay": 0.03}}
        ) as response:
            frames = read_sse(response)
            first = await anext(frames)
            await redis.stop()
            rest = [event async for event in frames]
        await redis.start()
        recovered_in = await until_admitted(http, gateway, within=10)

    assert first.event == "stream"
    assert rest[-1].event == "done"
    assert "".join(e.json()["text"] for e in rest if e.event == "token") == "".join(words)
    assert recovered_in < 10


async def test_a_crashed_instance_gives_its_slots_back_after_the_lease_ttl(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    prefix = "crash-" + secrets.token_hex(6)
    async with redis_server() as redis:
        config = tmp_path / "tokenrelay.toml"
        config.write_text(
            f'redis_url = "{redis.url}"\n\n[models.demo]\nprovider = "scripted"\n\n'
            f'[rate_limits]\nconcurrent_streams = 2\nlease_ttl = 1.0\nkey_prefix = "{prefix}"\n'
        )
        hanging = ASK | {"script": {"hang_after": 0}}
        async with serve_process(config) as served:
            base, process = served.url, served.process
            await served.until_listening(http)
            held = [await http.post(f"{base}/v1/chat/completions", json=hanging) for _ in "ab"]
            # Longer than a lease: the crashed instance had been renewing them.
            await asyncio.sleep(1.5)
            process.kill()
            await process.wait()
            killed = time.monotonic()
        async with serve(redis_url=redis.url, rate_limits=_same(prefix)) as survivor:
            at_once = (await ask(http, survivor))[0]
            back_after = await until_admitted(http, survivor, within=10)
            since_kill = time.monotonic() - killed
        for response in held:
            response.close()

    assert [response.status for response in held] == [200, 200]
    assert at_once == 429
    assert since_kill < 5
    assert back_after < 5


def _same(prefix: str) -> dict[str, Any]:
    return {"concurrent_streams": 2, "lease_ttl": 1.0, "key_prefix": prefix}
