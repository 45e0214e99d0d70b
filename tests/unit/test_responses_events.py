"""The Responses encoder: the same log is the same events however it is read, so a resume from
any ``starting_after`` continues exactly; interleaved calls keep their own items."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from tokenrelay import errors
from tokenrelay.events import (
    Event,
    Failed,
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
from tokenrelay.responses import ResponseHead, build
from tokenrelay.responses.output import response_id_of_item
from tokenrelay.wires.responses import ResponsesEncoder

HEAD = ResponseHead("resp_abc123", 1_700_000_000, "demo", background=True)
LOG: list[Event] = [
    Opened("str_1", "demo"),
    ReasoningDelta("two "),
    ReasoningDelta("calls"),
    ReasoningSignature("sig"),
    TextDelta("Checking"),
    TextDelta(" both."),
    ToolCallStart(0, "call_a", "weather"),
    ToolCallStart(1, "call_b", "time"),
    ToolCallDelta(0, '{"city":'),
    ToolCallDelta(1, '{"zone":"CET"}'),
    ToolCallDelta(0, '"Paris"}'),
    ToolCallEnd(1),
    ToolCallEnd(0),
    Usage(5, 7, reasoning_tokens=2),
    Finish("tool_calls"),
]


def frames(data: bytes) -> list[dict[str, Any]]:
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            name, payload = block.split("\n")
            event = orjson.loads(payload.removeprefix("data: "))
            assert name == f"event: {event['type']}"
            out.append(event)
    return out


def read_in_batches(events: list[Event], starting_after: int, rng: random.Random) -> bytes:
    encoder = ResponsesEncoder(HEAD, starting_after)
    out, at = [], 0
    while at < len(events):
        size = rng.randint(1, 4)
        out.append(encoder.encode(events[at : at + size], at + 1))
        at += size
    return b"".join(out)


def test_every_event_is_numbered_once_from_zero_whatever_the_batches() -> None:
    whole = frames(ResponsesEncoder(HEAD).encode(LOG, 1))
    assert [e["sequence_number"] for e in whole] == list(range(len(whole)))
    rng = random.Random(13)
    for _ in range(20):
        assert frames(read_in_batches(LOG, -1, rng)) == whole


@pytest.mark.parametrize("after", range(-1, 40))
def test_a_resume_after_any_number_is_exactly_the_rest(after: int) -> None:
    whole = frames(ResponsesEncoder(HEAD).encode(LOG, 1))
    rest = frames(read_in_batches(LOG, after, random.Random(after)))
    assert rest == whole[after + 1 :]


def test_interleaved_calls_keep_their_own_items_and_the_object_matches_the_last_event() -> None:
    whole = frames(ResponsesEncoder(HEAD).encode(LOG, 1))
    final = build(HEAD, LOG).snapshot()
    assert whole[-1]["type"] == "response.completed" and whole[-1]["response"] == final
    reasoning, message, weather, time = final["output"]
    assert (reasoning["encrypted_content"], reasoning["content"][0]["text"]) == ("sig", "two calls")
    assert message["content"][0]["text"] == "Checking both."
    assert (weather["call_id"], weather["arguments"]) == ("call_a", '{"city":"Paris"}')
    assert (time["call_id"], time["arguments"]) == ("call_b", '{"zone":"CET"}')
    assert {response_id_of_item(item["id"]) for item in final["output"]} == {HEAD.id}
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    added = [e["output_index"] for e in whole if e["type"] == "response.output_item.added"]
    done = [e["output_index"] for e in whole if e["type"] == "response.output_item.done"]
    assert added == [0, 1, 2, 3] and sorted(done) == [0, 1, 2, 3]


def test_a_cancelled_stream_ends_its_open_items_incomplete_then_response_failed() -> None:
    log: list[Event] = [Opened("s", "demo"), TextDelta("half"), Failed(errors.Cancelled("stop"))]
    events = frames(ResponsesEncoder(HEAD).encode(log, 1))
    assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.failed"]
    assert events[-2]["item"]["status"] == "incomplete"
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["error"] == {"code": "cancelled", "message": "stop"}


def test_redacted_reasoning_is_an_item_of_its_own_with_only_encrypted_content() -> None:
    log: list[Event] = [
        Opened("s", "demo"),
        ReasoningDelta("visible"),
        RedactedReasoning("EncRypted=="),
        TextDelta("Ok."),
        Finish("stop"),
    ]
    events = frames(ResponsesEncoder(HEAD).encode(log, 1))
    thought, sealed, message = build(HEAD, log).snapshot()["output"]
    assert thought["content"] == [{"type": "reasoning_text", "text": "visible"}]
    assert "encrypted_content" not in thought
    assert (sealed["encrypted_content"], sealed["status"]) == ("EncRypted==", "completed")
    assert "content" not in sealed and message["type"] == "message"
    kinds = [(e["type"], e.get("output_index")) for e in events]
    assert ("response.output_item.added", 1) in kinds and ("response.output_item.done", 1) in kinds


def test_a_snapshot_mid_stream_has_the_open_items_so_far_and_leaves_them_open() -> None:
    speaking = build(HEAD, LOG[:5]).snapshot()["output"][1]  # the message, open
    assert speaking["status"] == "in_progress"
    assert speaking["content"] == [{"type": "output_text", "text": "Checking", "annotations": []}]
    builder = build(HEAD, LOG[:9])  # the text, both calls started, one fragment of the first
    output = builder.snapshot()["output"]
    assert output[1]["content"] == [
        {"type": "output_text", "text": "Checking both.", "annotations": []}
    ]
    assert (output[2]["arguments"], output[2]["status"]) == ('{"city":', "in_progress")
    assert output[3]["arguments"] == ""
    for event in LOG[9:]:
        builder.feed(event)
    assert builder.snapshot() == build(HEAD, LOG).snapshot()
