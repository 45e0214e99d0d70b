"""A stream's events folded into the whole reply: for the wires that answer ``stream: false``,
and for the recorder that stores it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import assert_never

from tokenrelay.chat import Part, ReasoningPart, RedactedReasoningPart, TextPart, ToolCall
from tokenrelay.events import (
    Event,
    Failed,
    Finish,
    Opened,
    Queued,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

# What a call with no argument fragments means: no arguments, which is an empty JSON object.
NO_ARGUMENTS = "{}"


@dataclass(slots=True)
class Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    @property
    def joined(self) -> str:
        return "".join(self.arguments) or NO_ARGUMENTS


@dataclass(slots=True)
class Reply:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    signature: str | None = None
    redacted: list[str] = field(default_factory=list)
    calls: dict[int, Call] = field(default_factory=dict)
    usage: Usage | None = None
    finish: str = "stop"

    def add(self, event: Event) -> None:
        match event:
            case TextDelta(text=text):
                self.text.append(text)
            case ReasoningDelta(text=text):
                self.reasoning.append(text)
            case ReasoningSignature(signature=signature):
                self.signature = signature
            case RedactedReasoning(data=data):
                self.redacted.append(data)
            case ToolCallStart(index=index, id=call_id, name=name):
                self.calls[index] = Call(call_id, name)
            case ToolCallDelta(index=index, arguments=arguments):
                if index in self.calls:
                    self.calls[index].arguments.append(arguments)
            case Usage():
                self.usage = event
            case Finish(reason=reason):
                self.finish = reason
            case Opened() | Queued() | ToolCallEnd() | Failed():
                pass
            case _:
                assert_never(event)

    def parts(self, *, calls: bool = True) -> tuple[Part, ...]:
        """The reply as content parts: reasoning, then text, then the calls in index order."""
        parts: list[Part] = []
        if self.reasoning or self.signature is not None:
            parts.append(ReasoningPart("".join(self.reasoning), self.signature))
        parts.extend(RedactedReasoningPart(data) for data in self.redacted)
        if self.text:
            parts.append(TextPart("".join(self.text)))
        if calls:
            for index in sorted(self.calls):
                call = self.calls[index]
                parts.append(ToolCall(call.id, call.name, call.joined))
        return tuple(parts)


def collect(events: Iterable[Event]) -> Reply:
    reply = Reply()
    for event in events:
        reply.add(event)
    return reply
