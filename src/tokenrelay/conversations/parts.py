"""Content parts as the store keeps them and the conversations API shows them: JSON objects.

One shape each, OpenAI's where OpenAI has one::

    {"type": "text", "text"}
    {"type": "image_url", "image_url": {"url", "detail"?}}     a reference: the URL as sent
    {"type": "tool_call", "id", "name", "arguments"}            arguments: JSON text
    {"type": "tool_result", "tool_call_id", "content"}
    {"type": "reasoning", "text", "signature"?}
    {"type": "redacted_reasoning", "data"}                     encrypted, carried back verbatim

A message that is only text stores no parts (its ``content`` is all of it). A user's tool
results are stored in the user's message, as Anthropic has them; :func:`for_model` turns them
into the ``role: "tool"`` messages of the canonical request, where every provider expects them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, assert_never

from tokenrelay.chat import (
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    RedactedReasoningPart,
    Role,
    TextPart,
    ToolCall,
    ToolResult,
)

JSONPart = dict[str, Any]


def part_json(part: Part) -> JSONPart:
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text}
        case ImagePart(url=url, detail=detail):
            image = {"url": url} if detail is None else {"url": url, "detail": detail}
            return {"type": "image_url", "image_url": image}
        case ToolCall(id=call_id, name=name, arguments=arguments):
            return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}
        case ToolResult(call_id=call_id, content=content):
            return {"type": "tool_result", "tool_call_id": call_id, "content": content}
        case ReasoningPart(text=text, signature=signature):
            reasoning: JSONPart = {"type": "reasoning", "text": text}
            if signature is not None:
                reasoning["signature"] = signature
            return reasoning
        case RedactedReasoningPart(data=data):
            return {"type": "redacted_reasoning", "data": data}
        case _:
            assert_never(part)


def part_of(data: JSONPart) -> Part:
    """The part a stored object holds (written by :func:`part_json`, so trusted)."""
    kind = data["type"]
    if kind == "text":
        return TextPart(data["text"])
    if kind == "image_url":
        image = data["image_url"]
        return ImagePart(image["url"], image.get("detail"))
    if kind == "tool_call":
        return ToolCall(data["id"], data["name"], data["arguments"])
    if kind == "tool_result":
        return ToolResult(data["tool_call_id"], data["content"])
    if kind == "reasoning":
        return ReasoningPart(data["text"], data.get("signature"))
    if kind == "redacted_reasoning":
        return RedactedReasoningPart(data["data"])
    raise ValueError(f"unknown stored part type {kind!r}")


def stored_parts(content: str | tuple[Part, ...]) -> list[JSONPart] | None:
    """What to store beside the text: None when the text is the whole message."""
    if isinstance(content, str) or all(isinstance(p, TextPart) for p in content):
        return None
    return [part_json(part) for part in content]


def stored_message(role: str, content: str, parts: list[JSONPart] | None) -> Message:
    """A stored row as one message of the history (still one unit for context fitting)."""
    speaker: Role = "assistant" if role == "assistant" else "user"
    if not parts:
        return Message(speaker, content)
    return Message(speaker, tuple(part_of(p) for p in parts))


def answers_calls(message: Message) -> bool:
    """True for a user message carrying tool results: it means nothing without its calls."""
    return message.role == "user" and any(isinstance(p, ToolResult) for p in message.parts)


def for_model(messages: Iterable[Message]) -> list[Message]:
    """The history as providers take it: each tool result its own ``tool`` message, first."""
    out: list[Message] = []
    for message in messages:
        if not answers_calls(message):
            out.append(message)
            continue
        rest: list[Part] = []
        for part in message.parts:
            if isinstance(part, ToolResult):
                out.append(Message("tool", (part,)))
            else:
                rest.append(part)
        if rest:
            out.append(Message("user", tuple(rest)))
    return out
