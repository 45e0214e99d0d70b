"""The official OpenAI SDK, unchanged, against the OpenAI-compatible wire."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from tests.gateway import serve

HELLO = [{"role": "user", "content": "hello there"}]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


def _async_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


async def test_sync_sdk_streams_text_and_a_final_usage_chunk() -> None:
    async with serve() as gateway:

        def consume() -> list[Any]:
            with _client(gateway.url) as client:
                stream = client.chat.completions.create(
                    model="demo",
                    messages=HELLO,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"script": {"delay": 0.01}},
                )
                return list(stream)

        chunks = await asyncio.to_thread(consume)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: hello there"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


async def test_async_sdk_streams_without_usage_unless_asked() -> None:
    async with serve() as gateway, _async_client(gateway.url) as client:
        stream = await client.chat.completions.create(
            model="demo",
            messages=HELLO,
            stream=True,  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: hello there"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks)


async def test_non_streaming_completion_has_message_and_usage() -> None:
    async with serve() as gateway, _async_client(gateway.url) as client:
        completion = await client.chat.completions.create(
            model="demo",
            messages=HELLO,
            max_tokens=2,  # type: ignore[arg-type]
        )
    assert completion.choices[0].message.content == "You said:"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


async def test_models_lists_every_configured_model() -> None:
    models = {"demo": {"provider": "scripted"}, "other": {"provider": "scripted"}}
    async with serve(models=models) as gateway, _async_client(gateway.url) as client:
        listed = [model.id async for model in client.models.list()]
    assert listed == ["demo", "other"]


async def test_upstream_rate_limit_before_first_token_is_a_429_with_retry_after() -> None:
    async with serve() as gateway, _async_client(gateway.url) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="demo",
                messages=HELLO,  # type: ignore[arg-type]
                stream=True,
                extra_body={"script": {"fail": "upstream_rate_limited", "retry_after": 7}},
            )
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "upstream_rate_limited"


async def test_unknown_model_is_a_404_not_found() -> None:
    async with serve() as gateway, _async_client(gateway.url) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="nope",
                messages=HELLO,
                stream=True,  # type: ignore[arg-type]
            )
    assert caught.value.code == "not_found"


async def test_mid_stream_failure_raises_in_the_sdk_after_the_text_so_far() -> None:
    received: list[str] = []
    async with serve() as gateway, _async_client(gateway.url) as client:
        stream = await client.chat.completions.create(
            model="demo",
            messages=HELLO,  # type: ignore[arg-type]
            stream=True,
            extra_body={"script": {"error_after": 2, "error_code": "upstream_error"}},
        )
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "You said:"
    assert "scripted failure" in caught.value.message


async def test_bad_request_is_a_400_the_sdk_understands() -> None:
    async with serve() as gateway, _async_client(gateway.url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="demo",
                messages=[{"role": "wizard", "content": "hi"}],  # type: ignore[list-item]
            )
    assert caught.value.code == "invalid_request"
    assert "messages.0.role" in caught.value.message
