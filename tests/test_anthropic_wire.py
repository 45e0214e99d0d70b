"""``POST /v1/messages`` with the official ``anthropic`` SDK as the client, against a real server.

The sync client runs in a worker thread: the gateway shares the test's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest

from tests.gateway import Gateway, parse_sse, serve
from tests.upstream import ANTHROPIC_KEY, through_fake_anthropic
from tokenrelay.testing.fake_anthropic import FakeAnthropic, fake_prompt

MODEL = "claude-demo"
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async with serve(models={MODEL: {"provider": "scripted"}}) as running:
        yield running


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="client-key", max_retries=0, timeout=10
    ) as sdk:
        yield sdk


def sync_client(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gateway.url, api_key="client-key", max_retries=0, timeout=10
    )


def script(**directions: Any) -> dict[str, Any]:
    return {"script": directions}


# -- streaming


async def test_async_stream_delivers_text_incrementally_then_the_final_message(
    client: anthropic.AsyncAnthropic,
) -> None:
    arrivals: list[tuple[float, str]] = []
    async with client.messages.stream(
        model=MODEL,
        max_tokens=100,
        messages=USER,
        extra_body=script(tokens=["one", " two", " three", " four"], delay=0.15),
    ) as stream:
        async for text in stream.text_stream:
            arrivals.append((time.monotonic(), text))
        final = await stream.get_final_message()

    assert "".join(text for _, text in arrivals) == "one two three four"
    # Token by token, not one buffered body: the first arrived long before the last.
    assert len(arrivals) >= 3
    assert arrivals[-1][0] - arrivals[0][0] > 0.25
    assert final.content[0].type == "text" and final.content[0].text == "one two three four"
    assert final.stop_reason == "end_turn"
    assert final.model == MODEL and final.role == "assistant" and final.id.startswith("msg_")
    assert final.usage.output_tokens == 4
    assert final.usage.input_tokens == 2  # "hello there", as the scripted model counts


async def test_sync_stream_delivers_text_and_final_usage(gateway: Gateway) -> None:
    def run() -> tuple[list[str], anthropic.types.Message]:
        with (
            sync_client(gateway) as sdk,
            sdk.messages.stream(
                model=MODEL,
                max_tokens=100,
                system="Be brief.",
                messages=USER,
                extra_body=script(tokens=["a", "b", "c"], delay=0.05),
            ) as stream,
        ):
            return list(stream.text_stream), stream.get_final_message()

    texts, final = await asyncio.to_thread(run)
    assert "".join(texts) == "abc" and len(texts) >= 2
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)


async def test_create_with_stream_true_yields_anthropic_events_in_order(
    client: anthropic.AsyncAnthropic,
) -> None:
    events = await client.messages.create(
        model=MODEL, max_tokens=100, messages=USER, stream=True, extra_body=script(text="hi you")
    )
    seen = [event async for event in events]

    kinds = [event.type for event in seen]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    deltas = [e.delta.text for e in seen if e.type == "content_block_delta"]
    assert "".join(deltas) == "hi you"  # type: ignore[arg-type]
    message_delta = seen[-2]
    assert message_delta.type == "message_delta"
    assert message_delta.delta.stop_reason == "end_turn"
    assert message_delta.usage.output_tokens == 2


async def test_sync_create_with_stream_true_streams_text(gateway: Gateway) -> None:
    def run() -> str:
        with sync_client(gateway) as sdk:
            events = sdk.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True)
            return "".join(
                event.delta.text
                for event in events
                if event.type == "content_block_delta" and event.delta.type == "text_delta"
            )

    assert await asyncio.to_thread(run) == "You said: hello there"


async def test_raw_wire_has_event_names_pings_and_matching_types(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": USER, "stream": True}
    async with http.post(f"{gateway.url}/v1/messages", json=body) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        events = list(parse_sse(await response.text()))

    names = [event.event for event in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(event.json()["type"] == event.event for event in events)
    start = events[0].json()["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["id"] == f"msg_{response.headers['x-stream-id'].removeprefix('str_')}"


async def test_max_tokens_cut_is_the_max_tokens_stop_reason(
    client: anthropic.AsyncAnthropic,
) -> None:
    async with client.messages.stream(
        model=MODEL, max_tokens=2, messages=USER, extra_body=script(tokens=["a", "b", "c"])
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "ab"  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens"


async def test_system_blocks_and_text_blocks_reach_the_model_in_order(
    client: anthropic.AsyncAnthropic,
) -> None:
    message = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        system=[{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        metadata={"user_id": "someone"},
        extra_body=script(echo="history"),
    )
    assert message.content[0].text == (  # type: ignore[union-attr]
        "system: Rule one.\n\nRule two. | user: Hi | assistant: Hello. | user: Bye"
    )


# -- not streaming


async def test_non_streaming_create_returns_a_message(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=100, messages=USER, extra_body=script(text="whole answer")
    )
    assert message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "whole answer"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 2)


async def test_sync_non_streaming_create_returns_a_message(gateway: Gateway) -> None:
    def run() -> anthropic.types.Message:
        with sync_client(gateway) as sdk:
            return sdk.messages.create(model=MODEL, max_tokens=100, messages=USER)

    message = await asyncio.to_thread(run)
    assert message.content[0].text == "You said: hello there"  # type: ignore[union-attr]


# -- errors


@pytest.mark.parametrize(
    ("code", "sdk_error", "error_type"),
    [
        ("upstream_rate_limited", anthropic.RateLimitError, "rate_limit_error"),
        ("invalid_request", anthropic.BadRequestError, "invalid_request_error"),
        ("upstream_unavailable", anthropic.InternalServerError, "overloaded_error"),
        ("upstream_timeout", anthropic.GatewayTimeoutError, "timeout_error"),
    ],
)
async def test_error_before_first_token_raises_the_sdk_error_class(
    client: anthropic.AsyncAnthropic,
    code: str,
    sdk_error: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(sdk_error) as streaming:
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=USER, extra_body=script(fail=code)
        ) as stream:
            await stream.get_final_message()
    with pytest.raises(sdk_error) as whole:
        await client.messages.create(
            model=MODEL, max_tokens=100, messages=USER, extra_body=script(fail=code)
        )
    for caught in (streaming.value, whole.value):
        assert caught.body == {
            "type": "error",
            "error": {"type": error_type, "message": f"scripted failure: {code}"},
        }


async def test_rate_limit_before_start_carries_retry_after(
    client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=USER,
            stream=True,
            extra_body=script(fail="upstream_rate_limited", retry_after=7),
        )
    assert caught.value.response.headers["retry-after"] == "7"


async def test_unknown_model_is_not_found(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(model="claude-nope", max_tokens=10, messages=USER)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"model": MODEL, "messages": USER}, "max_tokens"),
        ({"max_tokens": 10, "messages": USER}, "model"),
        ({"model": MODEL, "max_tokens": 10, "messages": []}, "messages"),
        ({"model": MODEL, "max_tokens": 0, "messages": USER}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 10, "messages": USER, "temperature": 1.5}, "temperature"),
        (
            {"model": MODEL, "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            },
            "messages.0.content",
        ),
    ],
)
async def test_invalid_request_is_an_anthropic_shaped_400(
    gateway: Gateway, http: aiohttp.ClientSession, body: dict[str, Any], where: str
) -> None:
    async with http.post(f"{gateway.url}/v1/messages", json=body) as response:
        assert response.status == 400
        payload = await response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"].startswith(where)


async def test_oversized_body_is_request_too_large(http: aiohttp.ClientSession) -> None:
    messages = [{"role": "user", "content": "x" * 500}]
    body = {"model": MODEL, "max_tokens": 10, "messages": messages}
    async with serve(
        models={MODEL: {"provider": "scripted"}}, limits={"max_body_bytes": 200}
    ) as gw:
        async with http.post(f"{gw.url}/v1/messages", json=body) as response:
            assert response.status == 413
            payload = await response.json()
    assert payload["error"]["type"] == "request_too_large"


async def test_mid_stream_failure_raises_in_the_sdk_after_the_text_so_far(
    client: anthropic.AsyncAnthropic,
) -> None:
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(
            model=MODEL,
            max_tokens=100,
            messages=USER,
            extra_body=script(
                tokens=["a", "b", "c"], error_after=2, error_code="upstream_unavailable"
            ),
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert "".join(texts) == "ab"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "scripted failure after 2 tokens"},
    }


async def test_sync_mid_stream_failure_raises_in_the_sdk(gateway: Gateway) -> None:
    def run() -> str:
        texts: list[str] = []
        with (
            sync_client(gateway) as sdk,
            pytest.raises(anthropic.APIStatusError),
            sdk.messages.stream(
                model=MODEL,
                max_tokens=100,
                messages=USER,
                extra_body=script(tokens=["a", "b"], truncate_after=1),
            ) as stream,
        ):
            texts.extend(stream.text_stream)
        return "".join(texts)

    assert await asyncio.to_thread(run) == "a"


async def test_client_leaving_mid_stream_cancels_the_generation(
    gateway: Gateway, client: anthropic.AsyncAnthropic
) -> None:
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=USER, extra_body=script(text="x " * 200, delay=0.05)
    ) as stream:
        generation = gateway.relay.streams[stream.response.headers["x-stream-id"]]
        async for _ in stream.text_stream:
            break
    async with asyncio.timeout(5):
        while not generation.finished:
            await asyncio.sleep(0.01)
    assert generation.status == "cancelled"
    assert len(generation.log.text()) < 100


# -- a full round trip: SDK → gateway → AnthropicProvider → fake Anthropic


@pytest.fixture
async def relayed(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Gateway, FakeAnthropic]]:
    async with through_fake_anthropic(monkeypatch) as pair:
        yield pair


def relayed_client(gateway: Gateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="client-key", max_retries=0, timeout=10
    )


async def test_round_trip_through_the_anthropic_provider(
    relayed: tuple[Gateway, FakeAnthropic],
) -> None:
    gateway, fake = relayed
    prompt = fake_prompt(tokens=["Bonjour", " à", " toi", " 👋", " FIN", " encore"], delay=0.05)
    async with (
        relayed_client(gateway) as sdk,
        sdk.messages.stream(
            model="claude",
            max_tokens=50,
            system="Answer in French.",
            messages=[{"role": "user", "content": prompt}],
            stop_sequences=[" FIN"],
            # Recent SDKs dropped the parameter; older ones and curl still send it.
            extra_body={"temperature": 0.3},
        ) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert "".join(texts) == "Bonjour à toi 👋" and len(texts) >= 2
    assert final.stop_reason == "end_turn"
    assert final.model == "claude"
    assert final.usage.output_tokens == 4
    assert final.usage.input_tokens == len(f"Answer in French. {prompt}".split())

    [sent] = fake.requests
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY  # the gateway's key, not the client's
    assert sent.json["model"] == "claude-upstream"
    assert sent.json["system"] == "Answer in French."
    assert sent.json["messages"] == [{"role": "user", "content": prompt}]
    assert (sent.json["max_tokens"], sent.json["temperature"]) == (50, 0.3)
    assert sent.json["stop_sequences"] == [" FIN"]


async def test_round_trip_upstream_overload_before_start_is_an_sdk_server_error(
    relayed: tuple[Gateway, FakeAnthropic],
) -> None:
    gateway, _ = relayed
    prompt = fake_prompt(status=529, error_message="Overloaded")
    async with relayed_client(gateway) as sdk:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await sdk.messages.create(
                model="claude", max_tokens=50, messages=[{"role": "user", "content": prompt}]
            )
    assert caught.value.status_code == 502
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "anthropic upstream: Overloaded"},
    }


async def test_round_trip_mid_stream_overload_raises_in_the_sdk(
    relayed: tuple[Gateway, FakeAnthropic],
) -> None:
    gateway, _ = relayed
    prompt = fake_prompt(tokens=["a", "b", "c"], error_after=1)
    texts: list[str] = []
    async with relayed_client(gateway) as sdk:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with sdk.messages.stream(
                model="claude", max_tokens=50, messages=[{"role": "user", "content": prompt}]
            ) as stream:
                async for text in stream.text_stream:
                    texts.append(text)
    assert texts == ["a"]
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_round_trip_client_leaving_closes_the_upstream_connection(
    relayed: tuple[Gateway, FakeAnthropic],
) -> None:
    gateway, fake = relayed
    prompt = fake_prompt(tokens=["tick "] * 200, delay=0.05)
    async with relayed_client(gateway) as sdk:
        async with sdk.messages.stream(
            model="claude", max_tokens=500, messages=[{"role": "user", "content": prompt}]
        ) as stream:
            async for _ in stream.text_stream:
                break
    [sent] = fake.requests
    assert await sent.wait_closed(2.0)
    assert sent.client_closed_early
