"""Admission through real gateways: concurrency, rates and budgets on every wire.

Each test runs on the in-process limiter and on a real Redis (a ``redis-server`` this module
starts); each gateway gets its own key prefix there, so tests never see each other's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.gateway import Gateway, read_sse, serve
from tests.redis_server import RedisServer, redis_server
from tokenrelay.limits import Gate


@pytest.fixture(scope="module")
async def shared_redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    server: RedisServer = request.getfixturevalue("shared_redis")
    return server.url


# A burst of 200 admissions opens as many Redis connections at once; on a loaded test machine
# that can take longer than the default timeout, which these tests do not measure.
BURST_TIMEOUT = 3.0


def limited(redis_url: str | None, prefix: str | None = None, **limits: Any) -> dict[str, Any]:
    """``serve()`` overrides: these per-user limits, on this backend, under a fresh prefix."""
    limits.setdefault("key_prefix", prefix or "test-" + secrets.token_hex(6))
    return {"rate_limits": limits, "redis_url": redis_url}


def body(stream: bool = True, content: str = "hi", **script: Any) -> dict[str, Any]:
    return {
        "model": "demo",
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        "script": script,
    }


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # aiohttp allows 100 connections by default; these tests need 200 open at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def gate(gateway: Gateway) -> Gate:
    found: Gate = gateway.services.gate
    return found


async def slots_back(gateway: Gateway, owner: str | None = None, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while await gate(gateway).live(owner):
            await asyncio.sleep(0.02)


async def burst(
    http: aiohttp.ClientSession, urls: list[str], count: int
) -> list[aiohttp.ClientResponse]:
    """``count`` streams that never end, spread over ``urls``, all started at once."""
    hang = body(hang_after=0)
    return await asyncio.gather(
        *(http.post(urls[i % len(urls)] + "/v1/chat/completions", json=hang) for i in range(count))
    )


async def tally(responses: list[aiohttp.ClientResponse]) -> tuple[Counter[int], set[str]]:
    statuses = Counter(r.status for r in responses)
    codes = {(await r.json())["error"]["code"] for r in responses if r.status != 200}
    return statuses, codes


async def test_200_concurrent_streams_against_a_limit_of_50_admit_exactly_50(
    redis_url: str | None,
) -> None:
    overrides = limited(redis_url, concurrent_streams=50, redis_timeout=BURST_TIMEOUT)
    async with serve(**overrides) as gateway, client() as http:
        responses = await burst(http, [gateway.url], 200)
        try:
            statuses, codes = await tally(responses)
            live = await gate(gateway).live(None)
        finally:
            for response in responses:
                response.close()
        await slots_back(gateway)
        again = await burst(http, [gateway.url], 60)
        try:
            statuses_again, _ = await tally(again)
        finally:
            for response in again:
                response.close()

    assert statuses == {200: 50, 429: 150}
    assert codes == {"concurrency_limited"}
    assert live == 50
    # Every slot came back when its client hung up.
    assert statuses_again == {200: 50, 429: 10}


async def test_two_instances_sharing_redis_admit_exactly_50_of_200(
    shared_redis: RedisServer,
) -> None:
    overrides = limited(shared_redis.url, concurrent_streams=50, redis_timeout=BURST_TIMEOUT)
    async with serve(**overrides) as one, serve(**overrides) as two, client() as http:
        responses = await burst(http, [one.url, two.url], 200)
        try:
            statuses, codes = await tally(responses)
            per_instance = Counter(
                r.url.port for r in responses if r.status == 200 and r.url.port is not None
            )
            live = await gate(one).live(None), await gate(two).live(None)
        finally:
            for response in responses:
                response.close()
        await slots_back(one)

    assert statuses == {200: 50, 429: 150}
    assert codes == {"concurrency_limited"}
    assert live == (50, 50)
    # Both instances admitted some: the limit held across them, not within each.
    assert len(per_instance) == 2


# Each ends one stream in its own way; the test then checks the slot came back.
Scenario = Callable[[Gateway, aiohttp.ClientSession], Awaitable[None]]


async def _disconnect(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    response = await http.post(f"{gateway.url}/v1/chat/completions", json=body(hang_after=0))
    assert response.status == 200
    response.close()


async def _cancel(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    response = await http.post(f"{gateway.url}/v1/streams", json=body(hang_after=0))
    stream_id = response.headers["X-Stream-Id"]
    async with http.delete(f"{gateway.url}/v1/streams/{stream_id}") as cancelled:
        assert (await cancelled.json())["cancelled"] is True
    response.close()


async def _error_mid_stream(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gateway.url}/chat/stream", json=body(error_after=2)) as response:
        lines = [line async for line in response.content]
    assert any(b'"code":"upstream_error"' in line for line in lines)


async def _upstream_refused(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    unavailable = body(fail="upstream_unavailable")
    async with http.post(f"{gateway.url}/v1/chat/completions", json=unavailable) as response:
        assert response.status == 502


async def _first_token_timeout(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gateway.url}/v1/streams", json=body(first_delay=30)) as response:
        events = [event async for event in read_sse(response)]
    assert events[-1].json()["code"] == "first_token_timeout"


async def _anthropic_disconnect(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    message = {"model": "demo", "max_tokens": 50, "stream": True, "script": {"hang_after": 0}}
    message["messages"] = [{"role": "user", "content": "hi"}]
    response = await http.post(f"{gateway.url}/v1/messages", json=message)
    assert response.status == 200
    response.close()


async def _websocket_cancel(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with connect(gateway.ws_url + "/ws/chat") as ws:
        await ws.send(orjson.dumps({"content": "hi", "script": {"hang_after": 0}}).decode())
        await _until(ws, "stream")
        await ws.send('{"type": "cancel"}')
        assert (await _until(ws, "error"))["code"] == "cancelled"


async def _websocket_drop(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    # The stream outlives the socket for the resume grace, then gives its slot back.
    async with connect(gateway.ws_url + "/ws/chat") as ws:
        await ws.send(orjson.dumps({"content": "hi", "script": {"hang_after": 0}}).decode())
        await _until(ws, "stream")


async def _conversation_deleted(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{gateway.url}/v1/conversations", json={}) as created:
        conversation_id = (await created.json())["id"]
    url = f"{gateway.url}/v1/conversations/{conversation_id}"
    turn = {"content": "hi", "script": {"hang_after": 0}}
    response = await http.post(url + "/messages", json=turn)
    assert response.status == 200
    async with http.delete(url) as deleted:
        assert deleted.status == 200
    response.close()


async def _until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            message: dict[str, Any] = orjson.loads(await ws.recv())
            if message["type"] == kind:
                return message


SCENARIOS: dict[str, Scenario] = {
    "disconnect": _disconnect,
    "cancel": _cancel,
    "error_mid_stream": _error_mid_stream,
    "upstream_refused": _upstream_refused,
    "first_token_timeout": _first_token_timeout,
    "anthropic_disconnect": _anthropic_disconnect,
    "websocket_cancel": _websocket_cancel,
    "websocket_drop": _websocket_drop,
    "conversation_deleted": _conversation_deleted,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_slot_comes_back_whatever_ends_the_stream(
    redis_url: str | None, scenario: str
) -> None:
    overrides = limited(redis_url, concurrent_streams=1)
    overrides.update(timeouts={"first_token": 0.3}, streams={"resume_grace": 0.2})
    async with serve(**overrides) as gateway, client() as http:
        await SCENARIOS[scenario](gateway, http)
        await slots_back(gateway)
        async with http.post(f"{gateway.url}/v1/chat/completions", json=body()) as after:
            status = after.status

    assert status == 200


async def test_a_stream_holds_its_slot_while_it_lives(redis_url: str | None) -> None:
    overrides = limited(redis_url, concurrent_streams=1, lease_ttl=0.3)
    async with serve(**overrides) as gateway, client() as http:
        held = await http.post(f"{gateway.url}/v1/chat/completions", json=body(hang_after=0))
        # Several lease lifetimes: only renewal keeps the slot taken.
        await asyncio.sleep(1.0)
        async with http.post(f"{gateway.url}/v1/chat/completions", json=body()) as refused:
            second = refused.status, refused.headers.get("Retry-After")
        held.close()

    assert held.status == 200
    assert second == (429, "1")


WIRES = ["openai", "openai_unstreamed", "native", "seed", "anthropic", "conversation"]


async def _request(gateway: Gateway, http: aiohttp.ClientSession, wire: str) -> Any:
    url = gateway.url
    if wire == "openai":
        return http.post(f"{url}/v1/chat/completions", json=body())
    if wire == "openai_unstreamed":
        return http.post(f"{url}/v1/chat/completions", json=body(stream=False))
    if wire == "native":
        return http.post(f"{url}/v1/streams", json=body())
    if wire == "seed":
        return http.post(f"{url}/chat/stream", json=body())
    if wire == "anthropic":
        message = {
            "model": "demo",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "x"}],
        }
        return http.post(f"{url}/v1/messages", json=message)
    # Made in the store: POST /v1/conversations would take the minute's one request itself.
    conversation = await gateway.services.store.create_conversation(None)
    return http.post(f"{url}/v1/conversations/{conversation.id}/messages", json={"content": "x"})


@pytest.mark.parametrize("wire", WIRES)
async def test_every_http_wire_is_admitted_with_rate_headers_and_refused_with_retry_after(
    redis_url: str | None, wire: str
) -> None:
    overrides = limited(redis_url, requests_per_minute=1, tokens_per_minute=10_000)
    async with serve(**overrides) as gateway, client() as http:
        async with await _request(gateway, http, wire) as first:
            admitted = first.status, dict(first.headers)
            await first.read()
        async with await _request(gateway, http, wire) as second:
            refused = second.status, dict(second.headers), await second.json()

    status, headers = admitted
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] in ("59s", "1m0s")
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert 9_000 < int(headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert headers["x-ratelimit-reset-tokens"].endswith(("s", "ms"))
    status, headers, error = refused
    assert status == 429
    assert 55 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    if wire == "anthropic":
        assert error["error"]["type"] == "rate_limit_error"
    else:
        assert error["error"]["code"] == "rate_limited"


@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_failure_before_the_first_token_still_carries_rate_headers(
    stream: bool,
) -> None:
    # The stream was admitted (and counted) before the upstream failed: say what is left.
    overrides = limited(None, requests_per_minute=5)
    async with serve(**overrides) as gateway, client() as http:
        request = body(stream=stream, fail="upstream_unavailable")
        async with http.post(f"{gateway.url}/v1/chat/completions", json=request) as response:
            status, headers = response.status, dict(response.headers)
            error = await response.json()

    assert status == 502
    assert error["error"]["code"] == "upstream_unavailable"
    assert headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "4"


async def test_the_websocket_refuses_a_turn_over_the_limit_and_keeps_the_socket(
    redis_url: str | None,
) -> None:
    async with (
        serve(**limited(redis_url, requests_per_minute=1)) as gateway,
        connect(gateway.ws_url + "/ws/chat") as ws,
    ):
        await ws.send('{"content": "one"}')
        done = await _until(ws, "done")
        await ws.send('{"content": "two"}')
        refused = await _until(ws, "error")
        await ws.send('{"type": "ping"}')
        pong = await _until(ws, "pong")

    assert done["finish_reason"] == "stop"
    assert refused["code"] == "rate_limited"
    assert pong == {"type": "pong"}


async def _admin_usage(
    http: aiohttp.ClientSession, gateway: Gateway, since: datetime
) -> list[dict[str, Any]]:
    # The session's database holds earlier tests' usage too; this test's is what came since.
    query = {"since": since.isoformat()}
    async with http.get(f"{gateway.url}/v1/admin/usage", params=query) as response:
        data: list[dict[str, Any]] = (await response.json())["data"]
    return data


async def test_the_daily_budget_counts_the_usage_the_provider_reported(
    redis_url: str | None,
) -> None:
    # Charged at admission: "hi" (1 + 4 of message overhead) + max_tokens 10 = 15 tokens.
    # Used (the scripted provider reports it): 1 prompt word + 3 tokens = 4.
    ask = body(stream=False, tokens=["a ", "b ", "c"]) | {"max_tokens": 10}
    began = datetime.now(UTC)
    async with serve(**limited(redis_url, tokens_per_day=20)) as gateway, client() as http:
        statuses = []
        for _ in range(3):
            async with http.post(f"{gateway.url}/v1/chat/completions", json=ask) as response:
                statuses.append(response.status)
                last = await response.json()
            await slots_back(gateway)
        usage = await _admin_usage(http, gateway, began)

    # Counting estimates, the second would not fit (15 + 15 > 20); counting usage, 4 + 15 does.
    assert statuses == [200, 200, 429]
    assert last["error"]["code"] == "budget_exceeded"
    assert usage == [
        {
            "user": None,
            "requests": 2,
            "prompt_tokens": 2,
            "completion_tokens": 6,
            "total_tokens": 8,
            "estimated_requests": 0,
        }
    ]


async def test_without_reported_usage_the_streamed_text_is_estimated_and_charged(
    redis_url: str | None,
) -> None:
    text = "one two three four five six seven eight nine ten eleven"
    ask = body(stream=False, text=text, usage=False) | {"max_tokens": 1000}
    began = datetime.now(UTC)
    # The estimate at admission is about 1005; the streamed text is about 19.
    async with serve(**limited(redis_url, tokens_per_minute=1030)) as gateway, client() as http:
        async with http.post(f"{gateway.url}/v1/chat/completions", json=ask) as response:
            first = response.status
        await slots_back(gateway)
        async with http.post(f"{gateway.url}/v1/chat/completions", json=ask) as response:
            second = response.status, response.headers["x-ratelimit-remaining-tokens"]
        usage = await _admin_usage(http, gateway, began)

    assert first == 200
    # Refunded to the estimate of what streamed, the bucket holds another request.
    assert second[0] == 200
    assert int(second[1]) < 30
    [row] = usage
    assert row["estimated_requests"] == 2
    assert row["completion_tokens"] == 2 * -(-len(text) // 3)


async def test_per_user_overrides_in_the_config_apply_to_that_user_only(
    redis_url: str | None,
) -> None:
    overrides = limited(redis_url, concurrent_streams=1, users={"admin": {"concurrent_streams": 3}})
    async with serve(**overrides) as gateway:
        quotas = gate(gateway).quota(None), gate(gateway).quota("admin")

    assert quotas[0].concurrent_streams == 1
    assert quotas[1].concurrent_streams == 3


async def test_no_limits_configured_means_no_counters_and_no_headers(
    redis_url: str | None,
) -> None:
    async with serve(**limited(redis_url)) as gateway, client() as http:
        responses = await burst(http, [gateway.url], 20)
        statuses = Counter(r.status for r in responses)
        headers = {name for r in responses for name in r.headers}
        for response in responses:
            response.close()

    assert statuses == {200: 20}
    assert not {name for name in headers if name.lower().startswith("x-ratelimit")}
