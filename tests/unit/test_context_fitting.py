"""Context fitting counts what a model reads beyond text; a call and its result stay together."""

from __future__ import annotations

import pytest

from tokenrelay import errors
from tokenrelay.chat import ImagePart, Message, ReasoningPart, TextPart, Tool, ToolCall, ToolResult
from tokenrelay.conversations.context import ContextFitter, tool_json
from tokenrelay.conversations.parts import for_model
from tokenrelay.tokens import IMAGE_TOKENS, MESSAGE_OVERHEAD, TOOL_OVERHEAD, estimate_tokens

SEARCH = Tool("search", "Search the web", {"type": "object", "properties": {"q": {}}})


async def test_an_image_costs_the_documented_estimate_whatever_its_url() -> None:
    fitter = ContextFitter(budget=10_000)
    short = Message("user", (TextPart("what is it?"), ImagePart("https://x/a.png")))
    inline = Message(
        "user", (TextPart("what is it?"), ImagePart("data:image/png;base64," + "A" * 9000))
    )

    assert await fitter.cost(short) == await fitter.cost(inline)
    assert (
        await fitter.cost(short) == estimate_tokens("what is it?") + IMAGE_TOKENS + MESSAGE_OVERHEAD
    )


async def test_tool_calls_results_and_reasoning_count_as_text_the_model_reads() -> None:
    fitter = ContextFitter(budget=10_000)
    reply = Message(
        "assistant",
        (
            ReasoningPart("think " * 50, "sig"),
            ToolCall("c1", "search", '{"q": "' + "x" * 300 + '"}'),
        ),
    )
    result = Message("user", (ToolResult("c1", "found " * 100),))

    assert await fitter.cost(reply) > estimate_tokens("think " * 50) + 100
    assert await fitter.cost(result) > estimate_tokens("found " * 100)


async def test_tool_definitions_count_against_the_window() -> None:
    new = Message("user", "hi")
    without = ContextFitter(budget=10_000)
    await without.start([], new)
    with_tools = ContextFitter(budget=10_000)
    await with_tools.start([], new, [SEARCH, SEARCH])
    tight = ContextFitter(budget=without.used + TOOL_OVERHEAD)

    assert with_tools.used == without.used + 2 * (
        estimate_tokens(tool_json(SEARCH)) + TOOL_OVERHEAD
    )
    with pytest.raises(errors.ContextLengthExceeded, match="the tools"):
        await tight.start([], new, [SEARCH])


async def test_tool_results_whose_call_did_not_fit_are_left_out_with_it() -> None:
    call = Message("assistant", (ToolCall("c1", "search", '{"q": "' + "x" * 3000 + '"}'),))
    result = Message("user", (ToolResult("c1", "short"),))
    older = [Message("user", "find x"), call, result, Message("assistant", "Found it.")]
    new = Message("user", "and y?")
    fitter = ContextFitter(budget=200)
    await fitter.start([], new)
    for message in reversed(older):
        await fitter.add(message)

    # The answer and the result fitted, the call did not: a result nothing asked for is
    # refused upstream, and the answer would open the history with the assistant.
    assert fitter.dropped and len(fitter._turns) == 3
    assert fitter.messages() == [new]


def test_tool_results_go_to_the_model_as_tool_messages_before_the_rest() -> None:
    answer = Message(
        "user", (ToolResult("c1", "18C"), ToolResult("c2", "12:00"), TextPart("and tomorrow?"))
    )

    assert for_model([answer]) == [
        Message("tool", (ToolResult("c1", "18C"),)),
        Message("tool", (ToolResult("c2", "12:00"),)),
        Message("user", (TextPart("and tomorrow?"),)),
    ]
