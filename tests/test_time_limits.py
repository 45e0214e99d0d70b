"""First-token, idle and total limits: each its own code on every wire, the upstream closed.

A first-token timeout before the upstream accepted the request is an HTTP 504; once it has
accepted (the scripted provider accepts at once, as an upstream answering 200 does), the
response has started and the timeout is an error event in the wire's own dialect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.gateway import Gateway, parse_sse, serve
from tokenrelay.chat import ChatRequest
from tokenrelay.events import ProviderEvent
from tokenrelay.providers.scripted import ScriptedProvider

# Well above the gaps of the scripts that must not trip them (0.05 s and 0.2 s), so that a
# loaded machine's stalls do not turn the "total" case into an idle timeout.
TIMEOUTS = {"first_token": 0.5, "idle": 0.5, "total": 1.5}
SSE_WIRES = [
    pytest.param("/v1/chat/completions", {"stream": True}, id="openai"),
    pytest.param("/v1/streams", {}, id="native"),
    pytest.param("/chat/stream", {}, id="seed"),
]
# Each limit and a script that trips it after the upstream accepted the request.
IN_STREAM = [
    pytest.param({"first_delay": 30}, "first_token_timeout", id="first-token"),
    pytest.param({"text": "a b c d", "hang_after": 2}, "idle_timeout", id="idle"),
    pytest.param({"tokens": ["t "], "repeat": 1000, "delay": 0.05}, "upstream_timeout", id="total"),
]


class RecordingProvider(ScriptedProvider):
    """The scripted provider, noting the task that runs each generation and each close."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.tasks: list[asyncio.Task[Any]] = []
        self.started = 0
        self.closed = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        self.started += 1
        # The relay iterates a provider inside the stream's own task.
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        inner = super().stream(request)
        assert isinstance(inner, AsyncGenerator)
        try:
            async for event in inner:
                yield event
        finally:
            await inner.aclose()
            self.closed += 1


def record(gateway: Gateway) -> RecordingProvider:
    scripted = gateway.relay.providers["demo"]
    recording = RecordingProvider("demo", scripted.config, scripted.context)
    gateway.relay.providers["demo"] = recording
    return recording


def body(extra: dict[str, Any], script: dict[str, Any]) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": "demo", "messages": messages, "script": script, **extra}


async def assert_stopped(provider: RecordingProvider, stream_id: str | None = None) -> None:
    """The stream's task has ended, none of its tasks is left, and the provider was closed."""
    (task,) = provider.tasks
    stream_id = stream_id or task.get_name()
    assert task.get_name() == stream_id
    await asyncio.wait([task], timeout=2)
    assert task.done()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == stream_id]
    assert provider.started == provider.closed == 1


def in_stream_error(path: str, raw: str) -> dict[str, Any]:
    """The error a wire sent after its response started, in that wire's dialect."""
    last = list(parse_sse(raw))[-1]
    if path == "/v1/streams":
        assert last.event == "error"
        error: dict[str, Any] = last.json()
        return error
    if path == "/chat/stream":
        payload = last.json()
        assert set(payload) == {"error", "code"}
        return {"code": payload["code"], "message": payload["error"]}
    payload = orjson.loads(last.data)
    assert set(payload) == {"error"}
    error = payload["error"]
    return error


@pytest.mark.parametrize(("path", "extra"), SSE_WIRES)
@pytest.mark.parametrize(("script", "code"), IN_STREAM)
async def test_limit_after_acceptance_is_an_error_event_and_closes_the_upstream(
    http: aiohttp.ClientSession,
    path: str,
    extra: dict[str, Any],
    script: dict[str, Any],
    code: str,
) -> None:
    async with serve(timeouts=TIMEOUTS) as gateway:
        provider = record(gateway)
        async with http.post(gateway.url + path, json=body(extra, script)) as response:
            assert response.status == 200
            raw = await asyncio.wait_for(response.text(), 5)
            stream_id = response.headers["X-Stream-Id"]
        await assert_stopped(provider, stream_id)

    error = in_stream_error(path, raw)
    assert error["code"] == code
    assert error["message"]
    assert "[DONE]" not in raw


@pytest.mark.parametrize(("path", "extra"), SSE_WIRES)
async def test_first_token_limit_before_acceptance_is_http_504(
    http: aiohttp.ClientSession, path: str, extra: dict[str, Any]
) -> None:
    async with serve(timeouts=TIMEOUTS) as gateway:
        provider = record(gateway)
        request = body(extra, {"accept_delay": 30})
        async with http.post(gateway.url + path, json=request) as response:
            assert response.status == 504
            assert response.content_type == "application/json"
            payload = await response.json()
        await assert_stopped(provider)

    assert payload["error"]["code"] == "first_token_timeout"
    assert payload["error"]["type"] == "timeout_error"


async def test_non_streaming_completion_limit_is_http_504(http: aiohttp.ClientSession) -> None:
    async with serve(timeouts=TIMEOUTS) as gateway:
        provider = record(gateway)
        request = body({"stream": False}, {"text": "a b c", "hang_after": 1})
        async with http.post(f"{gateway.url}/v1/chat/completions", json=request) as response:
            assert response.status == 504
            payload = await response.json()
        await assert_stopped(provider)

    assert payload["error"]["code"] == "idle_timeout"


@pytest.mark.parametrize(
    ("script", "code"),
    [
        *IN_STREAM,
        pytest.param({"accept_delay": 30}, "first_token_timeout", id="before-acceptance"),
    ],
)
async def test_limit_on_the_websocket_is_an_error_message_and_closes_the_upstream(
    script: dict[str, Any], code: str
) -> None:
    async with serve(timeouts=TIMEOUTS) as gateway:
        provider = record(gateway)
        async with connect(gateway.ws_url + "/ws/chat", open_timeout=5) as ws:
            await ws.send(orjson.dumps({"content": "hi", "script": script}).decode())
            messages: list[dict[str, Any]] = []
            while not messages or messages[-1]["type"] not in ("done", "error"):
                messages.append(orjson.loads(await asyncio.wait_for(ws.recv(), 5)))
            await assert_stopped(provider, messages[0]["stream_id"])
            # The socket outlives the failed reply.
            await ws.send(orjson.dumps({"content": "again"}).decode())
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "stream"

    assert messages[-1]["type"] == "error"
    assert messages[-1]["code"] == code


async def test_each_limit_measures_its_own_gap(http: aiohttp.ClientSession) -> None:
    # Gaps of 0.2 s stay under the 0.5 s idle limit, so only the 1.5 s total can end this
    # stream, and it must let ~7 tokens through first.
    script = {"tokens": ["t "], "repeat": 100, "delay": 0.2}
    async with serve(timeouts=TIMEOUTS) as gateway:
        request = body({}, script)
        async with http.post(f"{gateway.url}/chat/stream", json=request) as response:
            events = [e.json() for e in parse_sse(await response.text())]

    assert events[-1]["code"] == "upstream_timeout"
    assert 2 <= len(events) - 1 <= 8
