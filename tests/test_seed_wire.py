"""The seed-style SSE wire of the FastAPI-tutorial client, and UTF-8 on every SSE wire."""

from __future__ import annotations

import itertools
import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.gateway import parse_sse, read_sse, serve

SEED_PATHS = ["/chat/stream", "/api/v1/chat/stream"]
# Emoji (4 bytes, one with a joiner and a flag pair), CJK (3 bytes) and accented Latin (2).
TRICKY = "Héllo wörld 👋🏽 こんにちは 世界 café 🇫🇷 naïve 👨‍👩‍👧 ñandú"


def body(**script: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "script": script}


@pytest.mark.parametrize("path", SEED_PATHS)
async def test_tokens_arrive_one_by_one_spaced_in_time_then_done(
    http: aiohttp.ClientSession, path: str
) -> None:
    tokens = ["one ", "two ", "three ", "four ", "five"]
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async with serve() as gateway:
        request = body(tokens=tokens, delay=0.2)
        async with http.post(gateway.url + path, json=request) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            async for event in read_sse(response):
                arrivals.append((time.monotonic(), event.json()))

    payloads = [payload for _, payload in arrivals]
    assert "".join(p["token"] for p in payloads[:-1]) == "".join(tokens)
    # One frame per token; a stall of the shared machine may merge one pair, no more.
    assert len(payloads) - 1 >= len(tokens) - 1
    assert payloads[-1] == {"done": True, "finish_reason": "stop"}
    token_times = [at for at, payload in arrivals if "token" in payload]
    # Five tokens 0.2 s apart span 0.8 s; batching at the end would span ~0.
    assert token_times[-1] - token_times[0] >= 0.4
    gaps = [later - earlier for earlier, later in itertools.pairwise(token_times)]
    assert sum(gap >= 0.1 for gap in gaps) >= 2


@pytest.mark.parametrize("path", SEED_PATHS)
async def test_only_data_lines_no_ids_or_event_names(
    http: aiohttp.ClientSession, path: str
) -> None:
    async with serve() as gateway:
        async with http.post(gateway.url + path, json=body(text="a b c")) as response:
            raw = await response.text()

    lines = [line for line in raw.split("\n") if line and not line.startswith(":")]
    assert lines
    assert all(line.startswith("data: ") for line in lines), lines
    events = [e.json() for e in parse_sse(raw)]
    assert "".join(e.get("token", "") for e in events) == "a b c"


@pytest.mark.parametrize("path", SEED_PATHS)
async def test_mid_stream_failure_is_an_error_line_then_a_clean_end(
    http: aiohttp.ClientSession, path: str
) -> None:
    async with serve() as gateway:
        request = body(text="one two three four", error_after=2)
        async with http.post(gateway.url + path, json=request) as response:
            assert response.status == 200
            # ``text()`` raises if the response is cut off instead of ended.
            events = [e.json() for e in parse_sse(await response.text())]

    *tokens, error = events
    assert "".join(e["token"] for e in tokens) == "one two"
    assert set(error) == {"error", "code"}
    assert error["code"] == "upstream_error"
    assert isinstance(error["error"], str) and error["error"]


@pytest.mark.parametrize(
    ("fail", "status"),
    [("upstream_unavailable", 502), ("upstream_rate_limited", 429), ("invalid_request", 400)],
)
async def test_failure_before_the_first_token_is_an_http_status_with_openai_json(
    http: aiohttp.ClientSession, fail: str, status: int
) -> None:
    async with serve() as gateway:
        request = body(fail=fail, retry_after=7)
        async with http.post(f"{gateway.url}/chat/stream", json=request) as response:
            assert response.status == status
            assert response.content_type == "application/json"
            payload = await response.json()
            retry_after = response.headers.get("Retry-After")

    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "code"}
    assert payload["error"]["code"] == fail
    assert retry_after == "7"


async def test_without_model_the_configured_default_model_answers(
    http: aiohttp.ClientSession,
) -> None:
    models = {
        "alpha": {"provider": "scripted", "options": {"script": {"text": "from alpha"}}},
        "beta": {"provider": "scripted", "options": {"script": {"text": "from beta"}}},
    }
    request = {"messages": [{"role": "user", "content": "hi"}]}
    async with serve(models=models, default_model="beta") as gateway:
        async with http.post(f"{gateway.url}/chat/stream", json=request) as response:
            events = [e.json() for e in parse_sse(await response.text())]
        async with http.post(
            f"{gateway.url}/chat/stream", json=request | {"model": "alpha"}
        ) as response:
            named = [e.json() for e in parse_sse(await response.text())]

    assert "".join(e.get("token", "") for e in events) == "from beta"
    assert "".join(e.get("token", "") for e in named) == "from alpha"


async def test_max_tokens_is_honoured_with_finish_reason_length(
    http: aiohttp.ClientSession,
) -> None:
    async with serve() as gateway:
        request = body(text="one two three four five six") | {"max_tokens": 3}
        async with http.post(f"{gateway.url}/chat/stream", json=request) as response:
            events = [e.json() for e in parse_sse(await response.text())]

    assert "".join(e["token"] for e in events[:-1]) == "one two three"
    assert events[-1] == {"done": True, "finish_reason": "length"}


def _openai_text(raw: str) -> str:
    text = ""
    for event in parse_sse(raw):
        if event.data == "[DONE]":
            continue
        for choice in orjson.loads(event.data)["choices"]:
            text += choice["delta"].get("content") or ""
    return text


def _native_text(raw: str) -> str:
    return "".join(e.json()["text"] for e in parse_sse(raw) if e.event == "token")


def _seed_text(raw: str) -> str:
    return "".join(e.json().get("token", "") for e in parse_sse(raw))


@pytest.mark.parametrize(
    ("path", "extra", "decode"),
    [
        ("/chat/stream", {}, _seed_text),
        ("/api/v1/chat/stream", {}, _seed_text),
        ("/v1/streams", {}, _native_text),
        ("/v1/chat/completions", {"stream": True}, _openai_text),
    ],
)
async def test_multibyte_characters_split_across_chunks_arrive_intact(
    http: aiohttp.ClientSession, path: str, extra: dict[str, Any], decode: Any
) -> None:
    async with serve() as gateway:
        request = {"model": "demo", **body(text=TRICKY, split_utf8=True, delay=0.002), **extra}
        async with http.post(gateway.url + path, json=request) as response:
            assert response.status == 200
            raw_bytes = await response.read()

    raw = raw_bytes.decode("utf-8")  # strict: a broken sequence on the wire raises here
    assert "\ufffd" not in raw
    assert decode(raw) == TRICKY
