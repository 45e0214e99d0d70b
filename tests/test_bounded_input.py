"""Bad or oversized input gets a clear 4xx naming the problem on every HTTP wire, never a 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.gateway import Gateway, serve

LIMITS = {
    "max_body_bytes": 2_000,
    "max_messages": 3,
    "max_message_chars": 100,
    "max_tokens": 50,
}
WIRES = [
    pytest.param("/v1/chat/completions", id="openai"),
    pytest.param("/v1/streams", id="native"),
    pytest.param("/chat/stream", id="seed"),
]


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[Gateway]:
    async with serve(limits=LIMITS) as running:
        yield running


def user(content: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": content}


async def error_of(
    response: aiohttp.ClientResponse, status: int, code: str = "invalid_request"
) -> str:
    """Check the status and the OpenAI-shaped JSON error; return its message."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    payload = await response.json()
    assert set(payload) == {"error"}
    assert payload["error"]["code"] == code
    message: str = payload["error"]["message"]
    assert message
    return message


@pytest.mark.parametrize("path", WIRES)
async def test_body_over_the_limit_is_413_payload_too_large(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    request = {"messages": [user("x" * 50)], "padding": "p" * 3_000}
    async with http.post(gateway.url + path, json=request) as response:
        message = await error_of(response, 413, "payload_too_large")
    assert "2000 bytes" in message


@pytest.mark.parametrize("path", WIRES)
async def test_chunked_body_over_the_limit_without_content_length_is_413(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "hi"}], "padding": "'
        for _ in range(5):
            yield b"p" * 1_000
        yield b'"}'

    headers = {"Content-Type": "application/json"}
    async with http.post(gateway.url + path, data=chunks(), headers=headers) as response:
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        await error_of(response, 413, "payload_too_large")


@pytest.mark.parametrize("path", WIRES)
async def test_more_messages_than_the_limit_is_400(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    request = {"messages": [user()] * 4}
    async with http.post(gateway.url + path, json=request) as response:
        message = await error_of(response, 400)
    assert "too many messages" in message


@pytest.mark.parametrize("path", WIRES)
async def test_message_longer_than_the_limit_is_413(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    request = {"messages": [user(), user("y" * 101)]}
    async with http.post(gateway.url + path, json=request) as response:
        message = await error_of(response, 413, "payload_too_large")
    assert "messages.1.content" in message


@pytest.mark.parametrize("path", WIRES)
async def test_max_tokens_over_the_limit_is_400(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    request = {"messages": [user()], "max_tokens": 51}
    async with http.post(gateway.url + path, json=request) as response:
        message = await error_of(response, 400)
    assert "max_tokens" in message


async def test_max_completion_tokens_over_the_limit_is_400(
    http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    request = {"messages": [user()], "max_completion_tokens": 51, "stream": True}
    async with http.post(f"{gateway.url}/v1/chat/completions", json=request) as response:
        assert "max_tokens" in await error_of(response, 400)


MALFORMED = [
    pytest.param(b'{"messages": [', "not valid JSON", id="malformed-json"),
    pytest.param(b"", "empty", id="empty-body"),
    pytest.param(b"[1, 2]", "JSON object", id="array"),
    pytest.param(b"null", "JSON object", id="null"),
    pytest.param(b'"hello"', "JSON object", id="string"),
    pytest.param(b"{}", "messages", id="no-messages"),
    pytest.param(b'{"messages": "hi"}', "messages", id="messages-not-a-list"),
    pytest.param(b'{"messages": [1]}', "messages.0", id="message-not-an-object"),
    pytest.param(b'{"messages": []}', "messages", id="no-message"),
    pytest.param(
        b'{"messages": [{"role": "wizard", "content": "hi"}]}',
        "messages.0.role",
        id="unknown-role",
    ),
    pytest.param(
        # Images are content now; a part type tokenrelay has no model for is still refused.
        b'{"messages": [{"role": "user", "content": [{"type": "input_audio",'
        b' "input_audio": {"data": "AAAA", "format": "wav"}}]}]}',
        "messages.0.content",
        id="unsupported-content-part",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": 42}]}',
        "messages.0.content",
        id="content-a-number",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "lots"}',
        "max_tokens",
        id="max-tokens-not-a-number",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
        "max_tokens",
        id="max-tokens-zero",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}',
        "temperature",
        id="temperature-out-of-range",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "script": {"delay": "x"}}',
        "script.delay",
        id="bad-script",
    ),
]


@pytest.mark.parametrize("path", WIRES)
@pytest.mark.parametrize(("data", "field"), MALFORMED)
async def test_malformed_or_mistyped_bodies_are_400_naming_the_field(
    http: aiohttp.ClientSession, gateway: Gateway, path: str, data: bytes, field: str
) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post(gateway.url + path, data=data, headers=headers) as response:
        message = await error_of(response, 400)
    assert field in message


@pytest.mark.parametrize("path", WIRES)
async def test_unknown_model_is_404(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    request = {"model": "no-such-model", "messages": [user()]}
    async with http.post(gateway.url + path, json=request) as response:
        assert "no-such-model" in await error_of(response, 404, "not_found")


@pytest.mark.parametrize(
    "path", ["/nope", "/v1/nope", "/v1/chat/completions/extra", "/api/v1/chat"]
)
async def test_unknown_route_is_404_json(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    async with http.post(gateway.url + path, json={}) as response:
        assert path in await error_of(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/streams"),
        ("GET", "/chat/stream"),
        ("PUT", "/api/v1/chat/stream"),
        ("POST", "/v1/models"),
        ("PATCH", "/v1/streams/str_x"),
    ],
)
async def test_wrong_method_is_405_json(
    http: aiohttp.ClientSession, gateway: Gateway, method: str, path: str
) -> None:
    async with http.request(method, gateway.url + path) as response:
        assert method in await error_of(response, 405)
        assert "Allow" in response.headers


@pytest.mark.parametrize("value", [True, "12", 1.5])
async def test_regression_max_tokens_must_be_a_real_integer(
    http: aiohttp.ClientSession, value: object
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": value}
    async with serve() as gateway, http.post(f"{gateway.url}/chat/stream", json=body) as response:
        assert response.status == 400
        assert "max_tokens" in (await response.json())["error"]["message"]


@pytest.mark.parametrize("path", WIRES)
async def test_an_unexpected_failure_is_a_logged_json_500_and_the_server_goes_on(
    path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    # uvicorn closes a connection whose request failed: one connection per request here.
    connector = aiohttp.TCPConnector(force_close=True)
    async with serve() as running, aiohttp.ClientSession(connector=connector) as http:
        monkeypatch.setattr(running.relay, "open", broken)
        request = {"model": "demo", "messages": [user()], "stream": True}
        async with http.post(running.url + path, json=request) as response:
            assert response.status == 500
            payload = await response.json()
        monkeypatch.undo()
        async with http.post(running.url + path, json=request) as response:
            after = response.status

    assert payload["error"]["code"] == "internal_error"
    assert "a bug" not in str(payload)
    assert any("a bug" in str(r.exc_info) for r in caplog.records if r.exc_info)
    assert after == 200


@pytest.mark.parametrize("path", WIRES)
async def test_a_get_on_a_stream_starting_route_is_405(
    http: aiohttp.ClientSession, gateway: Gateway, path: str
) -> None:
    async with http.get(gateway.url + path) as response:
        await error_of(response, 405)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {"role": "user", "content": 123},
            "messages.0.content: Input should be a valid string or a valid list",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": 5}]},
            "messages.0.content.0.text: Input should be a valid string",
        ),
    ],
    ids=["neither-string-nor-parts", "a-bad-part"],
)
async def test_a_union_field_is_named_as_the_client_wrote_it(
    http: aiohttp.ClientSession, gateway: Gateway, message: dict[str, Any], expected: str
) -> None:
    # Not pydantic's member tags ("content.str"): the field, and what would have been valid.
    request = {"messages": [message]}
    async with http.post(gateway.url + "/v1/chat/completions", json=request) as response:
        assert await error_of(response, 400) == expected


@pytest.mark.parametrize("path", WIRES)
async def test_a_client_that_leaves_mid_body_starts_nothing_and_is_no_error(
    gateway: Gateway, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    started = gateway.relay.started_total
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n".encode()
        + b'{"messages": [{"role": "user", "content": "hi"'
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.2)

    # Nothing was started for it, nothing went wrong on the server's side, and it goes on.
    assert gateway.relay.started_total == started
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    async with aiohttp.ClientSession() as http:
        request = {"model": "demo", "messages": [user()], "stream": True}
        async with http.post(gateway.url + path, json=request) as response:
            assert response.status == 200
            await response.read()
