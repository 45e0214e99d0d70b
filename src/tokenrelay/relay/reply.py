"""A stream's events folded into the whole reply, for the wires that answer ``stream: false``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import assert_never

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
    calls: dict[int, Call] = field(default_factory=dict)
    usage: Usage | None = None
    finish: str = "stop"


def collect(events: Iterable[Event]) -> Reply:
    reply = Reply()
    for event in events:
        match event:
            case TextDelta(text=text):
                reply.text.append(text)
            case ReasoningDelta(text=text):
                reply.reasoning.append(text)
            case ReasoningSignature(signature=signature):
                reply.signature = signature
            case ToolCallStart(index=index, id=call_id, name=name):
                reply.calls[index] = Call(call_id, name)
            case ToolCallDelta(index=index, arguments=arguments):
                if index in reply.calls:
                    reply.calls[index].arguments.append(arguments)
            case Usage():
                reply.usage = event
            case Finish(reason=reason):
                reply.finish = reason
            case Opened() | Queued() | ToolCallEnd() | Failed():
                pass
            case _:
                assert_never(event)
    return reply
