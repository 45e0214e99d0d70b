"""AnthropicProvider against the fake Anthropic upstream, over real HTTP on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

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
from tokenrelay.providers.anthropic import AnthropicProvider, MessageStream, error_from_body
from tokenrelay.providers.base import ProviderContext
from tokenrelay.providers.sse import SSEEvent
from tokenrelay.testing.fake_anthropic import FakeAnthropic, fake_prompt

KEY = "sk-ant-test-SECRET-0123456789abcdef"
KEY_ENV = "TOKENRELAY_TEST_ANTHROPIC_KEY"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=KEY) as server:
        yield server


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def make_provider(http: Client, base_url: str) -> AnthropicProvider:
    config = ModelConfig(
        provider="anthropic", base_url=base_url, api_key_env=KEY_ENV, upstream_model="claude-up"
    )
    settings = load_settings(timeouts={"connect": 2.0})
    return AnthropicProvider("claude", config, ProviderContext(settings=settings, http=http))


@pytest.fixture
def provider(fake: FakeAnthropic, upstream_client: Client, key: str) -> AnthropicProvider:
    return make_provider(upstream_client, fake.url)


def ask(*history: Message, **script: Any) -> ChatRequest:
    return ChatRequest(model="claude", messages=[*history, Message("user", fake_prompt(**script))])


# -- the happy path


async def test_streams_text_then_usage_then_finish(provider: AnthropicProvider) -> None:
    events = await collect(provider, ask(tokens=["Hel", "lo", " world"]))

    assert events[0] == Accepted()
    assert events[1:4] == [TextDelta("Hel"), TextDelta("lo"), TextDelta(" world")]
    assert isinstance(events[4], Usage) and events[4].completion_tokens == 3
    assert events[5:] == [Finish("stop")]


async def test_request_is_a_streaming_messages_body_with_key_and_version(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    request = ask()
    request.options = ChatOptions(
        max_tokens=50, temperature=0.5, top_p=0.9, stop=("\n\nHuman:",), seed=7
    )
    await collect(provider, request)

    sent = fake.requests[0]
    assert sent.method == "POST" and sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-up",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": request.messages[0].content}],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["\n\nHuman:"],
    }


async def test_max_tokens_defaults_to_1024_and_unset_options_are_not_sent(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await collect(provider, ask())
    sent = fake.requests[0].json
    assert sent["max_tokens"] == 1024
    assert not {"system", "temperature", "top_p", "stop_sequences", "seed"} & set(sent)


async def test_system_prompts_go_to_the_system_field_and_turns_alternate(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    # The fake refuses a "system" role or two turns of one role in a row, as the API does.
    request = ask(
        Message("system", "You are terse."),
        Message("user", "first"),
        Message("user", "second"),
        Message("system", "Answer in English."),
        Message("assistant", "noted"),
        Message("assistant", ""),
        Message("assistant", "go on"),
        tokens=["ok"],
    )
    events = await collect(provider, request)

    assert text_of(events) == "ok"
    sent = fake.requests[0].json
    assert sent["system"] == "You are terse.\n\nAnswer in English."
    assert sent["messages"] == [
        {"role": "user", "content": "first\n\nsecond"},
        {"role": "assistant", "content": "noted\n\ngo on"},
        {"role": "user", "content": request.messages[-1].content},
    ]


async def test_usage_takes_input_from_message_start_and_output_from_message_delta(
    provider: AnthropicProvider,
) -> None:
    events = await collect(provider, ask(usage={"input_tokens": 42, "output_tokens": 7}))
    assert [e for e in events if isinstance(e, Usage)] == [Usage(42, 7)]


async def test_pings_and_thinking_blocks_carry_no_text(provider: AnthropicProvider) -> None:
    events = await collect(
        provider, ask(tokens=["a", "b", "c"], thinking=["let me", " think"], ping_every=1)
    )
    assert [e for e in events if isinstance(e, TextDelta)] == [
        TextDelta("a"),
        TextDelta("b"),
        TextDelta("c"),
    ]
    assert events[-1] == Finish("stop")


# -- stop reasons


async def test_max_tokens_stop_reason_is_length(provider: AnthropicProvider) -> None:
    request = ask(tokens=["a", "b", "c", "d"])
    request.options = ChatOptions(max_tokens=2)
    events = await collect(provider, request)
    assert text_of(events) == "ab"
    assert events[-1] == Finish("length")


async def test_stop_sequence_stop_reason_is_stop(provider: AnthropicProvider) -> None:
    request = ask(tokens=["one", " two", " three"])
    request.options = ChatOptions(stop=(" three",))
    events = await collect(provider, request)
    assert text_of(events) == "one two"
    assert events[-1] == Finish("stop")


@pytest.mark.parametrize("reason", ["refusal", "pause_turn"])
async def test_other_stop_reasons_pass_unchanged(provider: AnthropicProvider, reason: str) -> None:
    events = await collect(provider, ask(stop_reason=reason))
    assert events[-1] == Finish(reason)


# -- failures inside the stream


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", errors.UpstreamUnavailable),
        ("rate_limit_error", errors.UpstreamRateLimited),
        ("invalid_request_error", errors.InvalidRequest),
        ("api_error", errors.UpstreamError),
        ("timeout_error", errors.UpstreamTimeout),
        ("some_future_error", errors.UpstreamError),
    ],
)
async def test_error_event_mid_stream_is_mapped(
    provider: AnthropicProvider, error_type: str, expected: type[errors.TokenRelayError]
) -> None:
    script = {"tokens": ["a", "b", "c"], "error_after": 2, "error_type": error_type}
    events, error = await fail(provider, ask(error_message="Overloaded", **script))

    assert events == [Accepted(), TextDelta("a"), TextDelta("b")]
    assert type(error) is expected
    assert "Overloaded" in error.message


async def test_overloaded_error_event_before_the_first_token(provider: AnthropicProvider) -> None:
    events, error = await fail(provider, ask(error_after=0))
    assert events == [Accepted()]
    assert type(error) is errors.UpstreamUnavailable


async def test_body_ending_mid_event_is_truncation(provider: AnthropicProvider) -> None:
    events, error = await fail(provider, ask(tokens=["a", "b", "c"], truncate_after=1))
    assert text_of(events) == "a"
    assert type(error) is errors.UpstreamError
    assert "truncated" in error.message


async def test_body_ending_without_message_stop_is_truncation_not_finish(
    provider: AnthropicProvider,
) -> None:
    events, error = await fail(provider, ask(tokens=["a", "b"], no_stop=True))
    assert text_of(events) == "ab"
    assert not any(isinstance(e, Finish | Usage) for e in events)
    assert type(error) is errors.UpstreamError
    assert "message_stop" in error.message


async def test_connection_dropped_mid_stream_is_upstream_error(
    provider: AnthropicProvider,
) -> None:
    events, error = await fail(provider, ask(tokens=["a", "b", "c"], drop_after=2))
    assert text_of(events) == "ab"
    assert type(error) is errors.UpstreamError


def test_event_data_that_is_not_json_is_upstream_error() -> None:
    stream = MessageStream(None)
    with pytest.raises(errors.UpstreamError, match="not JSON"):
        stream.handle(SSEEvent("content_block_delta", '{"type": "content_bl'))


# -- failures before the stream


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (529, None, errors.UpstreamUnavailable),
        (429, None, errors.UpstreamRateLimited),
        (400, None, errors.InvalidRequest),
        (413, None, errors.PayloadTooLarge),
        (404, None, errors.NotFound),
        (500, None, errors.UpstreamError),
        (503, "overloaded_error", errors.UpstreamUnavailable),
        # The gateway's own key or account is refused: no client can fix that.
        (401, None, errors.UpstreamError),
        (403, None, errors.UpstreamError),
        (402, None, errors.UpstreamError),
    ],
)
async def test_upstream_http_error_is_mapped_before_accepting(
    provider: AnthropicProvider,
    status: int,
    error_type: str | None,
    expected: type[errors.TokenRelayError],
) -> None:
    events, error = await fail(provider, ask(status=status, error_type=error_type))
    assert events == []
    assert type(error) is expected
    assert f"fake upstream error {status}" in error.message


async def test_rate_limit_carries_retry_after(provider: AnthropicProvider) -> None:
    _, error = await fail(provider, ask(status=429, headers={"Retry-After": "3"}))
    assert type(error) is errors.UpstreamRateLimited
    assert error.retry_after == 3.0
    assert error.headers() == {"Retry-After": "3"}


async def test_prompt_too_long_is_context_length_exceeded(provider: AnthropicProvider) -> None:
    message = "prompt is too long: 210000 tokens > 200000 maximum"
    _, error = await fail(provider, ask(status=400, error_message=message))
    assert type(error) is errors.ContextLengthExceeded
    assert message in error.message


async def test_wrong_key_is_refused_upstream_and_blamed_on_the_gateway(
    fake: FakeAnthropic, upstream_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-not-the-right-one")
    events, error = await fail(make_provider(upstream_client, fake.url), ask())
    assert events == []
    assert type(error) is errors.UpstreamError
    assert "credentials" in error.message


async def test_connect_refused_is_upstream_unavailable(upstream_client: Client, key: str) -> None:
    with refused_port() as port:
        events, error = await fail(
            make_provider(upstream_client, f"http://127.0.0.1:{port}"), ask()
        )
    assert events == []
    assert type(error) is errors.UpstreamUnavailable


async def test_api_key_never_appears_in_errors_or_logs(
    provider: AnthropicProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    leak = f"invalid x-api-key {KEY}"
    scripts: list[dict[str, Any]] = [
        {"status": 401, "error_message": leak},
        {"status": 400, "error_message": leak},
        {"status": 529, "error_message": leak},
        {"tokens": ["a"], "error_after": 1, "error_message": leak},
    ]
    for script in scripts:
        _, error = await fail(provider, ask(**script))
        assert "[redacted]" in error.message
        assert_secret_not_in_chain(error, KEY)
        assert KEY not in str(error.to_anthropic_payload())
    assert KEY not in caplog.text


async def test_a_key_straddling_the_500_character_cut_leaks_no_prefix(
    provider: AnthropicProvider,
) -> None:
    # Cut first and redacted after, the key's first characters would survive the cut.
    error = error_from_body("x" * 490 + KEY, 502, KEY)
    assert KEY[:6] not in error.message
    _, error = await fail(provider, ask(status=401, error_message="x" * 490 + KEY))
    assert KEY[:6] not in error.message
    assert len(error.message) <= 600


# -- closing the upstream


async def test_aclose_after_first_token_closes_upstream_connection(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await assert_aclose_after_first_token_closes_upstream(
        provider, fake, ask(tokens=["a"] * 100, delay=0.05)
    )


async def test_cancel_while_waiting_for_first_token_closes_upstream(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await assert_cancel_once_accepted_closes_upstream(provider, fake, ask(first_delay=30))


async def test_finished_streams_reuse_one_keepalive_connection(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    # The body's end trails the last event a little: the provider reads it, then reuses.
    for _ in range(5):
        events = await collect(provider, ask(tokens=["a", "b"], end_delay=0.02))
        assert events[-1] == Finish("stop")
    _, error = await fail(provider, ask(tokens=["a"], error_after=1, end_delay=0.02))
    assert type(error) is errors.UpstreamUnavailable
    await collect(provider, ask())
    assert len(fake.connections) == 1
    assert fake.open_connections == 1


async def test_upstream_keeping_the_body_open_after_message_stop_still_finishes(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    await assert_body_left_open_still_finishes(provider, fake, ask(tokens=["a"], end_delay=30))
