"""What an upstream does reaches each wire in that wire's own dialect, and nothing leaks."""

from __future__ import annotations

import base64
import logging

import aiohttp
import pytest

from tests.gateway import parse_sse
from tests.upstream import UPSTREAM_KEY, asking, through_fake

CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
    }
}


@pytest.mark.parametrize(
    ("upstream", "status", "code"),
    [
        ({"status": 401}, 502, "upstream_error"),
        ({"status": 404}, 404, "not_found"),
        ({"status": 429, "headers": {"Retry-After": "12"}}, 429, "upstream_rate_limited"),
        ({"status": 500}, 502, "upstream_unavailable"),
        ({"status": 503}, 502, "upstream_unavailable"),
        ({"status": 400, "error_body": CONTEXT_ERROR}, 400, "context_length_exceeded"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/stream", "/v1/streams"])
async def test_upstream_status_before_first_token_is_the_mapped_http_status(
    monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    path: str,
    upstream: dict[str, object],
    status: int,
    code: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with through_fake(monkeypatch) as (gateway, fake):
        body = {**asking(**upstream), "stream": True}
        async with http.post(gateway.url + path, json=body) as response:
            text = await response.text()
            assert response.status == status, text
            assert (await response.json())["error"]["code"] == code
            if status == 429:
                assert response.headers["Retry-After"] == "12"
        assert fake.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert UPSTREAM_KEY not in text
    assert UPSTREAM_KEY not in caplog.text


async def test_upstream_key_never_reaches_a_client_or_a_log_line_on_connect_failure(
    monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with through_fake(monkeypatch) as (gateway, fake):
        await fake.stop()  # the upstream is gone: connection refused
        async with http.post(gateway.url + "/chat/stream", json=asking()) as response:
            text = await response.text()
    assert response.status == 502
    assert "upstream_unavailable" in text
    assert UPSTREAM_KEY not in text and UPSTREAM_KEY not in caplog.text


@pytest.mark.parametrize(
    ("path", "error_of"),
    [
        ("/chat/stream", lambda e: e.json().get("code")),
        ("/v1/streams", lambda e: e.json().get("code") if e.event == "error" else None),
        ("/v1/chat/completions", lambda e: e.json().get("error", {}).get("code")),
    ],
)
@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"mid_stream_error_after": 2}, "upstream_error"),
        ({"truncate_after": 2}, "upstream_error"),
        ({"drop_after": 2}, "upstream_error"),
        ({"no_done": True}, "upstream_error"),
    ],
)
async def test_mid_stream_failure_is_an_error_event_after_the_text_then_a_clean_end(
    monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
    path: str,
    error_of: object,
    fault: dict[str, object],
    code: str,
) -> None:
    async with through_fake(monkeypatch) as (gateway, _):
        body = {**asking(tokens=["one ", "two ", "three"], **fault), "stream": True}
        async with http.post(gateway.url + path, json=body) as response:
            assert response.status == 200
            events = list(parse_sse(await response.text()))
    codes = [error_of(event) for event in events if event.data != "[DONE]"]  # type: ignore[operator]
    assert codes[-1] == code
    assert all(c is None for c in codes[:-1])
    assert "[DONE]" not in [event.data for event in events]


EMOJI_SPLIT = "h\u00e9 \U0001f44b \u4e16\u754c caf\u00e9"


@pytest.mark.parametrize("path", ["/chat/stream", "/v1/streams", "/v1/chat/completions"])
async def test_multibyte_characters_split_across_upstream_chunks_arrive_whole(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession, path: str
) -> None:
    import orjson

    event = b"data: " + orjson.dumps({"choices": [{"delta": {"content": EMOJI_SPLIT}}]})
    body = event + b"\n\ndata: [DONE]\n\n"
    # Cut the upstream body into 3-byte writes: every multi-byte character is split.
    chunks = [
        {"base64": base64.b64encode(body[i : i + 3]).decode()} for i in range(0, len(body), 3)
    ]
    async with through_fake(monkeypatch) as (gateway, _):
        request = {**asking(chunks=chunks, delay=0.002), "stream": True}
        async with http.post(gateway.url + path, json=request) as response:
            raw = await response.text()
    text = ""
    for sse in parse_sse(raw):
        if sse.data == "[DONE]":
            continue
        data = sse.json()
        if "token" in data:
            text += data["token"]
        elif "text" in data:
            text += data["text"]
        elif data.get("choices"):
            text += data["choices"][0]["delta"].get("content") or ""
    assert text == EMOJI_SPLIT
    assert "\ufffd" not in raw
