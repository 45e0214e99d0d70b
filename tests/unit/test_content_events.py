"""The rich events (reasoning, tool calls, usage details) through the log, codec and encoders."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_encoders import WIRES, native, openai_chunks, text_of, websocket
from tokenrelay.chat import ChatOptions, ChatRequest, ImagePart, Message, TextPart, Tool, ToolCall
from tokenrelay.events import (
    Event,
    Finish,
    Opened,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from tokenrelay.providers.base import refusal
from tokenrelay.providers.local.provider import LocalProvider
from tokenrelay.relay import codec
from tokenrelay.relay.log import coalesce

CALLS: list[Event] = [
    Opened("str_1", "demo"),
    ReasoningDelta("Let me "),
    ReasoningDelta("think."),
    ReasoningSignature("sig-1"),
    RedactedReasoning("RW5jcnlwdGVk"),
    TextDelta("Checking."),
    ToolCallStart(0, "call_a", "weather"),
    ToolCallDelta(0, '{"city":'),
    ToolCallDelta(0, '"Paris"}'),
    ToolCallEnd(0),
    ToolCallStart(1, "call_b", "now"),
    ToolCallEnd(1),
    Usage(10, 5, cached_tokens=4, reasoning_tokens=3),
    Finish("tool_calls"),
]


def test_coalescing_merges_runs_of_one_kind_and_never_glues_arguments_across_calls() -> None:
    interleaved: list[Event] = [
        ToolCallDelta(0, '{"a":'),
        ToolCallDelta(0, "1}"),
        ToolCallDelta(1, '{"b":'),
        ToolCallDelta(1, "2}"),
        ReasoningDelta("x"),
        ReasoningDelta("y"),
        TextDelta("a"),
        TextDelta("b"),
    ]
    assert coalesce(interleaved, 1) == [
        (2, ToolCallDelta(0, '{"a":1}')),
        (4, ToolCallDelta(1, '{"b":2}')),
        (6, ReasoningDelta("xy")),
        (8, TextDelta("ab")),
    ]


def test_the_stream_log_codec_round_trips_every_new_kind() -> None:
    assert codec.decode(codec.encode(CALLS)) == CALLS


def test_the_codec_reads_usage_written_before_it_had_details() -> None:
    assert codec.decode(b'[{"k":"u","p":3,"c":2}]') == [Usage(3, 2)]


def test_openai_chunks_carry_tool_calls_as_openai_streams_them() -> None:
    chunks = [c for c in openai_chunks(CALLS) if isinstance(c, dict)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls == [
        {
            "index": 0,
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"city":"Paris"}'}},
        {
            "index": 1,
            "id": "call_b",
            "type": "function",
            "function": {"name": "now", "arguments": ""},
        },
        # A call with no arguments ends as an empty object, as OpenAI sends it.
        {"index": 1, "function": {"arguments": "{}"}},
    ]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert chunks[-2]["choices"] == [] or chunks[-1]["choices"] == []
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")][-1]
    assert finish == "tool_calls"
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    assert usage["prompt_tokens_details"] == {"cached_tokens": 4}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}


def test_native_names_reasoning_and_tool_call_events() -> None:
    named = [(name, data) for name, data in native(CALLS) if name in ("reasoning", "tool_call")]
    assert named == [
        ("reasoning", {"text": "Let me think."}),
        ("reasoning", {"signature": "sig-1"}),
        ("reasoning", {"redacted": "RW5jcnlwdGVk"}),
        ("tool_call", {"index": 0, "id": "call_a", "name": "weather"}),
        ("tool_call", {"index": 0, "arguments": '{"city":"Paris"}'}),
        ("tool_call", {"index": 0, "done": True}),
        ("tool_call", {"index": 1, "id": "call_b", "name": "now"}),
        ("tool_call", {"index": 1, "done": True}),
    ]
    usage = next(data for name, data in native(CALLS) if name == "usage")
    assert usage == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 4,
        "reasoning_tokens": 3,
    }


def test_websocket_tool_call_messages_keep_the_event_id_apart_from_the_call_id() -> None:
    start: dict[str, Any] = next(m for m in websocket(CALLS) if m.get("name") == "weather")
    assert start == {
        "type": "tool_call",
        "index": 0,
        "call_id": "call_a",
        "name": "weather",
        "id": 7,
    }


@pytest.mark.parametrize("wire", WIRES)
def test_no_wire_mistakes_reasoning_or_arguments_for_text(wire: str) -> None:
    assert text_of(wire, CALLS) == "Checking."


def test_a_request_names_the_fields_a_text_only_provider_cannot_honour() -> None:
    history = [
        Message("user", (TextPart("what is this?"), ImagePart("data:image/png;base64,AAAA"))),
        Message("assistant", (ToolCall("call_a", "look", "{}"),)),
    ]
    request = ChatRequest("m", history, ChatOptions(tools=(Tool("look"),)))
    assert request.features() == {"tools": "tools", "images": "messages[0].content (image)"}
    assert ChatRequest("m", [Message("user", "hi")]).features() == {}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (ChatOptions(tools=(Tool("look"),)), "tools"),
        (ChatOptions(reasoning_effort="high"), "reasoning_effort"),
        (ChatOptions(extra={"logit_bias": {}}, dialect="openai"), "logit_bias"),
    ],
)
def test_the_local_model_refuses_what_it_cannot_do_naming_the_field(
    options: ChatOptions, named: str
) -> None:
    # The capability check needs no model: it runs before the request waits for one.

    image = Message("user", (ImagePart("https://example.com/cat.png"),))
    assert refusal(LocalProvider, "smollm2", ChatRequest("smollm2", [image])) == (
        "messages[0].content (image) is not supported by model 'smollm2' (provider local)"
    )
    reason = refusal(LocalProvider, "smollm2", ChatRequest("smollm2", [], options))
    assert reason is not None and reason.startswith(f"{named} is not supported by model 'smollm2'")
    assert (
        refusal(LocalProvider, "smollm2", ChatRequest("smollm2", [Message("user", "hi")])) is None
    )
