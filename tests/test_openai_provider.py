"""OpenAIProvider against the fake upstream, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest

from tests.providers import (
    assert_aclose_after_first_token_closes_upstream,
    assert_body_left_open_still_finishes,
    assert_cancel_once_accepted_closes_upstream,
    assert_secret_not_in_chain,
    collect,
    fail,
    refused_port,
    text_of,
)
from tokenrelay import errors
from tokenrelay.chat import ChatOptions, ChatRequest, Message
from tokenrelay.client import Client
from tokenrelay.config import ModelConfig, load_settings
from tokenrelay.events import Accepted, Finish, TextDelta, Usage
from tokenrelay.providers import openai as openai_module
from tokenrelay.providers.base import ProviderContext
from tokenrelay.providers.openai import OpenAIProvider
from tokenrelay.providers.sse import SSEDecoder
from tokenrelay.testing import FakeOpenAI, fake_prompt

KEY = "sk-test-SECRET-0123456789abcdef"
KEY_ENV = "TOKENRELAY_TEST_UPSTREAM_KEY"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def make_provider(http: Client, base_url: str, *, key_env: str | None = KEY_ENV) -> OpenAIProvider:
    config = ModelConfig(
        provider="openai", base_url=base_url, api_key_env=key_env, upstream_model="up-model"
    )
    settings = load_settings(timeouts={"connect": 2.0})
    return OpenAIProvider("gpt-test", config, ProviderContext(settings=settings, http=http))


@pytest.fixture
def provider(fake: FakeOpenAI, upstream_client: Client, key: str) -> OpenAIProvider:
    return make_provider(upstream_client, fake.base_url)


def ask(**script: Any) -> ChatRequest:
    return ChatRequest(model="gpt-test", messages=[Message("user", fake_prompt(**script))])


# -- the happy path


async def test_streams_text_then_usage_then_finish(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    events = await collect(provider, ask(tokens=["Hel", "lo", " world"]))

    assert events[0] == Accepted()
    assert events[1:4] == [TextDelta("Hel"), TextDelta("lo"), TextDelta(" world")]
    assert isinstance(events[4], Usage) and events[4].completion_tokens == 3
    assert events[5:] == [Finish("stop")]


async def test_request_carries_model_options_and_bearer_key(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    request = ask()
    request.options = ChatOptions(max_tokens=2, temperature=0.5, top_p=0.9, stop=("\n\n",), seed=7)
    events = await collect(provider, request)

    sent = fake.requests[0]
    assert sent.method == "POST" and sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json == {
        "model": "up-model",
        "messages": [{"role": "user", "content": request.messages[0].content}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
    }
    # The finish reason comes from the last chunk that had one.
    assert events[-1] == Finish("length")


async def test_unset_options_and_missing_key_are_not_sent(
    fake: FakeOpenAI, upstream_client: Client
) -> None:
    provider = make_provider(upstream_client, fake.base_url, key_env=None)
    await collect(provider, ask())
    sent = fake.requests[0]
    assert "authorization" not in sent.headers
    assert set(sent.json) == {"model", "messages", "stream", "stream_options"}


async def test_content_filter_is_a_normal_finish(provider: OpenAIProvider) -> None:
    events = await collect(provider, ask(tokens=["ok"], finish_reason="content_filter"))
    assert events[-1] == Finish("content_filter")


# -- bytes on the wire


class RecordingDecoder(SSEDecoder):
    chunks: ClassVar[list[bytes]] = []

    def feed(self, chunk: bytes) -> Any:
        RecordingDecoder.chunks.append(chunk)
        return super().feed(chunk)


@pytest.fixture
def wire_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    RecordingDecoder.chunks = []
    monkeypatch.setattr(openai_module, "SSEDecoder", RecordingDecoder)
    yield RecordingDecoder.chunks


def event(content: str, end: str = "\n") -> bytes:
    delta = json.dumps({"content": content}, ensure_ascii=False)
    body = f'{{"choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}'
    return f"data: {body}{end}{end}".encode()


def cut_inside_characters(wire: bytes) -> list[str]:
    """Split ``wire`` after the first byte of every multi-byte UTF-8 character."""
    pieces, start = [], 0
    for i, byte in enumerate(wire):
        if byte >= 0xC0:  # a lead byte: cut right after it
            pieces.append(wire[start : i + 1])
            start = i + 1
    pieces.append(wire[start:])
    return [p.decode("latin-1") for p in pieces]


async def test_multibyte_characters_split_across_tcp_chunks_arrive_whole(
    provider: OpenAIProvider, wire_chunks: list[bytes]
) -> None:
    texts = ["héllo ", "世界 ", "👋🏽 ", "naïve café"]
    wire = b"".join(event(t) for t in texts) + b"data: [DONE]\n\n"
    chunks = cut_inside_characters(wire)

    events = await collect(provider, ask(chunks=chunks, delay=0.01))

    assert text_of(events) == "".join(texts)
    assert "\ufffd" not in text_of(events)
    # Honest only if the network really delivered characters cut in two.
    broken = 0
    for chunk in wire_chunks:
        try:
            chunk.decode()
        except UnicodeDecodeError:
            broken += 1
    assert broken >= 5, wire_chunks


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
async def test_line_endings_and_keepalive_comments(provider: OpenAIProvider, end: str) -> None:
    events = await collect(provider, ask(tokens=["a", "é", "c"], line_ending=end, comments=True))
    assert text_of(events) == "aéc"
    assert events[-1] == Finish("stop")


async def test_crlf_split_between_tcp_chunks_is_one_line_end(
    provider: OpenAIProvider, wire_chunks: list[bytes]
) -> None:
    wire = event("one", "\r\n") + event("two", "\r\n") + b"data: [DONE]\r\n\r\n"
    # Cut right after every CR, so every LF starts the next TCP chunk.
    pieces = [p.decode() for p in re.split(b"(?<=\r)", wire) if p]
    events = await collect(provider, ask(chunks=pieces, delay=0.005))
    assert text_of(events) == "onetwo"
    assert events[-1] == Finish("stop")
    assert sum(c.endswith(b"\r") for c in wire_chunks) >= 4


async def test_surrogate_pair_split_across_deltas_is_joined(provider: OpenAIProvider) -> None:
    events = await collect(provider, ask(tokens=["hi \ud83d", "\ude00 there", "!"]))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["hi ", "😀 there", "!"]


async def test_stray_surrogate_becomes_replacement_character(provider: OpenAIProvider) -> None:
    events = await collect(provider, ask(tokens=["a\ude00b", "end \ud83d"]))
    assert text_of(events) == "a\ufffdbend \ufffd"
    assert events[-1] == Finish("stop")


# -- truncation and mid-stream failures


async def test_body_ending_without_done_is_truncation_not_finish(
    provider: OpenAIProvider,
) -> None:
    events, error = await fail(provider, ask(tokens=["a", "b"], no_done=True))
    assert type(error) is errors.UpstreamError
    assert "truncated" in error.message
    assert text_of(events) == "ab"
    assert not any(isinstance(e, Finish) for e in events)


async def test_body_ending_mid_event_is_truncation(provider: OpenAIProvider) -> None:
    events, error = await fail(provider, ask(tokens=["a", "b", "c"], truncate_after=2))
    assert type(error) is errors.UpstreamError
    assert "truncated" in error.message and "mid-event" in error.message
    assert text_of(events) == "ab"


async def test_connection_close_framed_body_without_done_is_truncation(
    provider: OpenAIProvider,
) -> None:
    _, error = await fail(provider, ask(tokens=["a"], no_done=True, framing="close"))
    assert "truncated" in error.message


async def test_connection_dropped_mid_stream_is_upstream_error(provider: OpenAIProvider) -> None:
    events, error = await fail(provider, ask(tokens=["a", "b", "c"], drop_after=1))
    assert type(error) is errors.UpstreamError
    assert "connection lost" in error.message
    assert Accepted() in events


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            errors.UpstreamRateLimited,
        ),
        ({"error": {"message": "Rate limited upstream", "code": 429}}, errors.UpstreamRateLimited),
        (
            {"error": {"message": "This model's maximum context length is 8192 tokens"}},
            errors.ContextLengthExceeded,
        ),
        (
            {"error": {"message": "boom", "type": "server_error", "code": "server_error"}},
            errors.UpstreamError,
        ),
    ],
    ids=["openai-rate", "openrouter-rate", "context", "server-error"],
)
async def test_mid_stream_error_payload_is_mapped(
    provider: OpenAIProvider, body: dict[str, Any], expected: type[errors.TokenRelayError]
) -> None:
    events, error = await fail(
        provider, ask(tokens=["a", "b"], mid_stream_error_after=1, error_body=body)
    )
    assert type(error) is expected
    assert body["error"]["message"] in error.message
    assert text_of(events) == "a"


async def test_invalid_json_in_a_data_line_is_upstream_error(provider: OpenAIProvider) -> None:
    chunks = [event("ok").decode(), "data: {not json\n\n", "data: [DONE]\n\n"]
    events, error = await fail(provider, ask(chunks=chunks))
    assert type(error) is errors.UpstreamError
    assert "not JSON" in error.message
    assert text_of(events) == "ok"


# -- HTTP statuses before the stream


@pytest.mark.parametrize(
    ("script", "expected", "retry_after"),
    [
        (
            {
                "status": 400,
                "error_body": {"error": {"message": "too long", "code": "context_length_exceeded"}},
            },
            errors.ContextLengthExceeded,
            None,
        ),
        (
            {
                "status": 400,
                "error_body": {
                    "error": {"message": "This model's maximum context length is 4096 tokens."}
                },
            },
            errors.ContextLengthExceeded,
            None,
        ),
        (
            {"status": 400, "error_body": {"error": {"message": "bad temperature"}}},
            errors.InvalidRequest,
            None,
        ),
        ({"status": 422, "error_body": {"detail": "field required"}}, errors.InvalidRequest, None),
        ({"status": 401}, errors.UpstreamError, None),
        ({"status": 403}, errors.UpstreamError, None),
        ({"status": 404}, errors.NotFound, None),
        ({"status": 408}, errors.UpstreamTimeout, None),
        ({"status": 413}, errors.PayloadTooLarge, None),
        ({"status": 429, "headers": {"Retry-After": "7"}}, errors.UpstreamRateLimited, 7.0),
        ({"status": 429, "headers": {"retry-after-ms": "1500"}}, errors.UpstreamRateLimited, 1.5),
        ({"status": 429}, errors.UpstreamRateLimited, None),
        ({"status": 500}, errors.UpstreamUnavailable, None),
        (
            {"status": 503, "error_body": "<html>Service Unavailable</html>"},
            errors.UpstreamUnavailable,
            None,
        ),
        ({"status": 529}, errors.UpstreamUnavailable, None),
        ({"status": 418}, errors.UpstreamError, None),
    ],
    ids=lambda v: str(v["status"]) if isinstance(v, dict) else "",
)
async def test_upstream_status_maps_to_error(
    provider: OpenAIProvider,
    script: dict[str, Any],
    expected: type[errors.TokenRelayError],
    retry_after: float | None,
) -> None:
    events, error = await fail(provider, ask(**script))
    assert events == []  # failed before Accepted: the client gets an HTTP status
    assert type(error) is expected
    if retry_after is None:
        assert error.retry_after is None
    else:
        assert error.retry_after == pytest.approx(retry_after, abs=2)


async def test_retry_after_as_http_date(provider: OpenAIProvider) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    _, error = await fail(provider, ask(status=429, headers={"Retry-After": when}))
    assert type(error) is errors.UpstreamRateLimited
    assert error.retry_after == pytest.approx(30, abs=2)


async def test_upstream_message_reaches_invalid_request(provider: OpenAIProvider) -> None:
    body = {"error": {"message": "temperature must be <= 2", "type": "invalid_request_error"}}
    _, error = await fail(provider, ask(status=400, error_body=body))
    assert "temperature must be <= 2" in error.message


async def test_rejected_upstream_key_blames_the_gateway_not_the_client(
    provider: OpenAIProvider,
) -> None:
    _, error = await fail(provider, ask(status=401))
    assert not isinstance(error, errors.Unauthorized)
    assert "credentials" in error.message


async def test_not_found_names_the_upstream_model(provider: OpenAIProvider) -> None:
    _, error = await fail(provider, ask(status=404))
    assert "up-model" in error.message and "not found upstream" in error.message


async def test_huge_error_body_is_read_only_in_part(provider: OpenAIProvider) -> None:
    _, error = await fail(provider, ask(status=400, error_body="x" * 1_000_000))
    assert type(error) is errors.InvalidRequest
    assert len(error.message) <= 1000


async def test_connect_refused_is_upstream_unavailable(upstream_client: Client, key: str) -> None:
    with refused_port() as port:
        provider = make_provider(upstream_client, f"http://127.0.0.1:{port}/v1")
        events, error = await fail(provider, ask())
    assert events == []
    assert type(error) is errors.UpstreamUnavailable
    # Where the upstream lives is the operator's business, not the client's.
    assert "127.0.0.1" not in error.message and str(port) not in error.message


# -- secrets


async def test_api_key_never_appears_in_errors_or_logs(
    provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    leaky = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}}
    caplog.set_level(logging.DEBUG)
    scripts: list[dict[str, Any]] = [
        {"status": 401, "error_body": leaky},
        {"status": 400, "error_body": leaky},
        {"status": 429, "error_body": leaky},
        {"status": 500, "error_body": f"proxy error for key {KEY}"},
        {"tokens": ["a"], "mid_stream_error_after": 1, "error_body": leaky},
    ]
    for script in scripts:
        _, error = await fail(provider, ask(**script))
        assert_secret_not_in_chain(error, KEY)
        assert KEY not in str(error.to_payload())
    assert KEY not in caplog.text


async def test_a_key_straddling_the_500_character_cut_leaks_no_prefix(
    provider: OpenAIProvider,
) -> None:
    # Cut first and redacted after, the key's first characters would survive the cut.
    straddling = "x" * 490 + KEY
    for script in (
        {"status": 401, "error_body": {"error": {"message": straddling}}},
        {"status": 500, "error_body": straddling},
    ):
        _, error = await fail(provider, ask(**script))
        assert KEY[:6] not in error.message
        assert_secret_not_in_chain(error, KEY[:6])


# -- closing the upstream


async def test_aclose_after_first_token_closes_upstream_connection(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    await assert_aclose_after_first_token_closes_upstream(
        provider, fake, ask(tokens=["a"] * 100, delay=0.05)
    )


async def test_cancel_while_waiting_for_first_token_closes_upstream(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    await assert_cancel_once_accepted_closes_upstream(provider, fake, ask(first_delay=30))


async def test_cancel_before_response_headers_closes_upstream(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    task = asyncio.create_task(collect(provider, ask(headers_delay=30)))
    async with asyncio.timeout(5):
        while not fake.requests:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.requests[0].wait_closed(1.0)
    assert fake.requests[0].client_closed_early


async def test_finished_streams_reuse_one_keepalive_connection(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    # The body's end trails [DONE] a little: the provider reads it so the socket is reusable.
    for _ in range(10):
        events = await collect(provider, ask(tokens=["a", "b"], end_delay=0.02))
        assert events[-1] == Finish("stop")
    assert len(fake.connections) == 1
    assert fake.open_connections == 1


async def test_upstream_keeping_the_body_open_after_done_still_finishes(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    await assert_body_left_open_still_finishes(provider, fake, ask(tokens=["a"], end_delay=30))


async def test_many_streams_of_every_outcome_leak_no_connections(
    fake: FakeOpenAI, key: str
) -> None:
    # Every connection still open afterwards must be one the pool holds for reuse.
    async with contextlib.aclosing(Client()) as http:
        provider = make_provider(http, fake.base_url)
        outcomes: list[dict[str, Any]] = [
            {"tokens": ["a", "b"]},
            {"status": 500},
            {"status": 429, "error_body": "x" * 200_000},
            {"tokens": ["a", "b"], "mid_stream_error_after": 1},
            {"tokens": ["a", "b"], "no_done": True},
            {"tokens": ["a", "b"], "truncate_after": 1},
            {"tokens": ["a", "b"], "drop_after": 1},
            {"tokens": ["a"] * 50, "delay": 0.01, "early_exit": True},
        ]

        async def one(script: dict[str, Any]) -> None:
            early = script.pop("early_exit", False)
            stream = provider.stream(ask(**script))
            try:
                async for event in stream:
                    if early and isinstance(event, TextDelta):
                        break
            except errors.TokenRelayError:
                pass
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

        async with asyncio.timeout(15):
            for _ in range(5):
                await asyncio.gather(*(one(dict(s)) for s in outcomes))

        assert len(fake.requests) == 5 * len(outcomes)
        # Whatever is still open on the server is an idle pooled connection, no more than
        # one round of streams needed at once.
        await asyncio.sleep(0.1)
        assert 0 < fake.open_connections == http.idle_connections <= len(outcomes)
    await asyncio.sleep(0.1)
    assert fake.open_connections == 0
