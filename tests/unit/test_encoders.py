"""Every wire's encoder over the same events, without a server: one table, one story each."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.gateway import parse_sse
from tokenrelay import errors
from tokenrelay.events import (
    Event,
    Failed,
    Finish,
    Opened,
    Queued,
    ReasoningDelta,
    ReasoningSignature,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from tokenrelay.wires.anthropic import MessageEncoder
from tokenrelay.wires.native import NativeEncoder
from tokenrelay.wires.openai import ChunkEncoder
from tokenrelay.wires.seed import SeedEncoder
from tokenrelay.wires.websocket import to_message

GOOD: list[Event] = [
    Opened("str_1", "demo"),
    Queued(1),
    TextDelta("Hel"),
    TextDelta("lo 👋"),
    Usage(3, 2),
    Finish("stop"),
]
FAILED: list[Event] = [
    Opened("str_1", "demo"),
    TextDelta("Hel"),
    Failed(errors.UpstreamError("the upstream broke")),
]


def native(events: list[Event]) -> list[tuple[str, Any]]:
    return [(e.event, e.json()) for e in parse_sse(NativeEncoder().encode(events, 1).decode())]


def openai_chunks(events: list[Event]) -> list[Any]:
    body = ChunkEncoder("chatcmpl-1", "demo", include_usage=True).encode(events, 1).decode()
    return [e.data if e.data == "[DONE]" else e.json() for e in parse_sse(body)]


def anthropic(events: list[Event]) -> list[tuple[str, Any]]:
    body = MessageEncoder("msg_1").encode(events, 1).decode()
    return [(e.event, e.json()) for e in parse_sse(body)]


def seed(events: list[Event]) -> list[Any]:
    return [e.json() for e in parse_sse(SeedEncoder().encode(events, 1).decode())]


def websocket(events: list[Event]) -> list[Any]:
    return [to_message(i, event) for i, event in enumerate(events, 1)]


def text_of(wire: str, events: list[Event]) -> str:
    if wire == "native":
        return "".join(d["text"] for name, d in native(events) if name == "token")
    if wire == "openai":
        chunks = [c for c in openai_chunks(events) if isinstance(c, dict) and c.get("choices")]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    if wire == "anthropic":
        return "".join(
            d["delta"]["text"]
            for name, d in anthropic(events)
            if name == "content_block_delta" and d["delta"]["type"] == "text_delta"
        )
    if wire == "seed":
        return "".join(d["token"] for d in seed(events) if "token" in d)
    return "".join(m["content"] for m in websocket(events) if m["type"] == "token")


WIRES = ["native", "openai", "anthropic", "seed", "websocket"]


@pytest.mark.parametrize("wire", WIRES)
def test_every_wire_carries_the_whole_text_once(wire: str) -> None:
    assert text_of(wire, GOOD) == "Hello 👋"
    assert text_of(wire, FAILED) == "Hel"


def test_native_names_every_event_and_coalesces_deltas_under_the_last_id() -> None:
    frames = parse_sse(NativeEncoder().encode(GOOD, 1).decode())

    assert [(f.id, f.event) for f in frames] == [
        ("1", "stream"),
        ("2", "queued"),
        ("4", "token"),
        ("5", "usage"),
        ("6", "done"),
    ]
    assert native(FAILED)[-1] == (
        "error",
        {"code": "upstream_error", "message": "the upstream broke"},
    )


def test_openai_chunks_open_with_the_role_end_with_finish_usage_and_done() -> None:
    chunks = openai_chunks(GOOD)

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"] == []
    assert chunks[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert chunks[-1] == "[DONE]"
    assert openai_chunks(FAILED)[-1]["error"]["code"] == "upstream_error"


def test_anthropic_events_follow_the_messages_stream_order() -> None:
    names = [name for name, _ in anthropic(GOOD)]

    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    delta = next(d for name, d in anthropic(GOOD) if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert anthropic(FAILED)[-1][1]["error"]["type"] == "api_error"


def test_seed_and_websocket_end_with_done_or_error() -> None:
    assert seed(GOOD)[-1] == {"done": True, "finish_reason": "stop"}
    assert seed(FAILED)[-1] == {"error": "the upstream broke", "code": "upstream_error"}
    assert websocket(GOOD)[-1] == {"type": "done", "finish_reason": "stop", "id": 6}
    assert websocket(FAILED)[-1]["code"] == "upstream_error"


def test_every_native_frame_is_one_json_object() -> None:
    for frame in parse_sse(NativeEncoder().encode(GOOD, 1).decode()):
        assert isinstance(orjson.loads(frame.data), dict)


def test_anthropic_blocks_share_one_index_space_and_one_block_is_open_at_a_time() -> None:
    events: list[Event] = [
        Opened("str_1", "demo"),
        ReasoningDelta("Hmm."),
        ReasoningSignature("sig"),
        TextDelta("Checking."),
        # As OpenAI-compatible upstreams stream parallel calls: both end at the finish.
        ToolCallStart(0, "call_a", "look"),
        ToolCallDelta(0, '{"q":1}'),
        ToolCallStart(1, "call_b", "now"),
        ToolCallEnd(0),
        ToolCallEnd(1),
        Usage(10, 4, cached_tokens=6, cache_creation_tokens=1),
        Finish("tool_calls"),
    ]
    frames = anthropic(events)
    flow = [
        (name, d.get("index"), (d.get("delta") or d.get("content_block") or {}).get("type"))
        for name, d in frames
        if name.startswith("content_block")
    ]
    assert flow == [
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"),
        ("content_block_stop", 3, None),
    ]
    delta = next(d for name, d in frames if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {
        "input_tokens": 3,
        "cache_creation_input_tokens": 1,
        "cache_read_input_tokens": 6,
        "output_tokens": 4,
    }
